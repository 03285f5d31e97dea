"""heatmap: one request for a heatmap of a region, answered as a PNG.

Event (JSON)::

    {"region": [x0, y0, x1, y1],   # required: the rectangle [x0, x1) × [y0, y1)
     "width": 256, "height": 256,  # the image's size in pixels
     "dataset": "heatmap/points",  # blobs DATASET.bin (records) and DATASET.index.json
     "weight": "count",            # "count": points per pixel; "value": sum of their values
     "scale": "log",               # "log" or "linear" (see render.py)
     "colormap": "heat",           # "heat" or "grey" (8-bit greyscale PNG)
     "format": "png",              # "png", or "grid": the summed grid as JSON
     "chunk_bytes": 1048576,       # bytes of records per subtask (about)
     "max_in_flight": 4,           # subtasks of this request running at once
     "kill_part": null}            # a failure drill: the subtask of this index
                                   # kills its own worker on its first attempt

How: the tile index says which byte runs of the records blob hold the
tiles the region touches (one run per row of tiles, adjacent runs merged);
``ctx.map_ranges`` cuts just those runs into subtasks of about
``chunk_bytes`` (``heatmap-part``: each bins its points into a
``height × width`` grid), ``heatmap-reduce`` sums the grids once all have
finished, and ``.wait()`` hands the sum back here to be rendered. With
``[cache]`` in shoal.toml an identical request is answered from the
node's result cache without running any of this.

The grid's row 0 is the image's top row (the region's high ``y``); a point
``(x, y)`` inside the region falls in column ``floor((x - x0) * width /
(x1 - x0))`` and row ``height - 1 - floor((y - y0) * height / (y1 - y0))``
(float64, each clipped to the grid).

A bad request is answered with status 400 and a line of text saying why.
"""

import base64
import json
import math
import zlib

import numpy as np

import render

RECORD_BYTES = 12
DEFAULT_DATASET = "heatmap/points"
MAX_SIDE = 4096
#: A child's grid travels as its JSON result (6 MiB at most by default):
#: 2^19 float64 cells are 4 MiB before compression.
MAX_PIXELS = 1 << 19

# The last tile indexes read, by (key, etag): a warm worker reads an index once.
_indexes = {}


class BadRequest(Exception):
    pass


def handler(event, ctx):
    try:
        req = parse(event)
        index, data = load_dataset(ctx, req["dataset"])
    except BadRequest as e:
        return ctx.Response("bad request: %s\n" % e, status=400)
    windows = tile_windows(index, req["region"])
    if windows:
        job = ctx.map_ranges(
            data.key, "heatmap-part",
            records=RECORD_BYTES,
            chunk_bytes=req["chunk_bytes"],
            windows=windows,
            then="heatmap-reduce",
            max_in_flight=req["max_in_flight"],
            args={
                "region": req["region"], "width": req["width"], "height": req["height"],
                "weight": req["weight"], "kill_part": req["kill_part"],
            },
        )
        reduced = job.wait(timeout=max(1.0, ctx.remaining_time_ms() / 1000.0 - 5.0))
    else:
        job = None
        reduced = {
            "grid": encode(np.zeros((req["height"], req["width"]), dtype=grid_dtype(req["weight"]))),
            "points": 0, "bytes_read": 0, "subtasks": 0,
        }
    summary = {
        "points": reduced["points"],
        "bytes_read": reduced["bytes_read"],
        "subtasks": reduced["subtasks"],
        "windows": [list(w) for w in windows],
        "job": job and str(job),
    }
    if req["format"] == "grid":
        return dict(summary, width=req["width"], height=req["height"], region=req["region"],
                    weight=req["weight"], grid=reduced["grid"])
    grid = decode(reduced["grid"])
    png = render.png(grid, req["scale"], req["colormap"])
    return ctx.Response(png, content_type="image/png", headers={
        "cache-control": "max-age=60",
        "x-heatmap-points": str(summary["points"]),
        "x-heatmap-bytes-read": str(summary["bytes_read"]),
        "x-heatmap-subtasks": str(summary["subtasks"]),
        "x-heatmap-windows": str(len(windows)),
    })


def parse(event):
    if not isinstance(event, dict):
        raise BadRequest("the event must be a JSON object with a region")
    region = event.get("region")
    if (not isinstance(region, list) or len(region) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in region)):
        raise BadRequest("region must be [x0, y0, x1, y1]")
    region = [float(v) for v in region]
    if not all(math.isfinite(v) for v in region) or not (region[0] < region[2] and region[1] < region[3]):
        raise BadRequest("region must be finite with x0 < x1 and y0 < y1")
    width, height = event.get("width", 256), event.get("height", 256)
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIDE:
            raise BadRequest("%s must be an integer from 1 to %d" % (name, MAX_SIDE))
    if width * height > MAX_PIXELS:
        raise BadRequest("width × height is %d pixels; at most %d" % (width * height, MAX_PIXELS))
    req = {
        "region": region, "width": width, "height": height,
        "dataset": event.get("dataset", DEFAULT_DATASET),
        "weight": event.get("weight", "count"),
        "scale": event.get("scale", "log"),
        "colormap": event.get("colormap", "heat"),
        "format": event.get("format", "png"),
        "chunk_bytes": event.get("chunk_bytes", 1 << 20),
        "max_in_flight": event.get("max_in_flight", 4),
        "kill_part": event.get("kill_part"),
    }
    choices = {"weight": ("count", "value"), "scale": ("log", "linear"),
               "colormap": ("heat", "grey"), "format": ("png", "grid")}
    for name, allowed in choices.items():
        if req[name] not in allowed:
            raise BadRequest("%s must be one of %s" % (name, ", ".join(allowed)))
    if not isinstance(req["dataset"], str) or not req["dataset"]:
        raise BadRequest("dataset must be a blob key prefix")
    for name, lo in (("chunk_bytes", RECORD_BYTES), ("max_in_flight", 1)):
        v = req[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise BadRequest("%s must be an integer of at least %d" % (name, lo))
    if req["kill_part"] is not None and not isinstance(req["kill_part"], int):
        raise BadRequest("kill_part must be a subtask index")
    return req


def load_dataset(ctx, dataset):
    """The tile index (cached by its etag) and the records blob."""
    try:
        blob = ctx.blob(dataset + ".index.json")
        data = ctx.blob(dataset + ".bin")
    except ctx.HostError as e:
        if e.code == "blob_not_found":
            raise BadRequest("no dataset %r: upload %s.bin and %s.index.json" % (dataset, dataset, dataset))
        raise
    key = (blob.key, blob.etag)
    index = _indexes.get(key)
    if index is None:
        index = json.loads(bytes(blob.read()))
        _indexes.clear()
        _indexes[key] = index
    if index.get("record_bytes") != RECORD_BYTES or data.size != index["points"] * RECORD_BYTES:
        raise BadRequest("%s.bin (%d bytes) does not match its index (%d points of %d bytes)" % (
            dataset, data.size, index.get("points", 0), index.get("record_bytes", 0)))
    return index, data


def tile_of(coord, lo, hi, tiles):
    """The tile of one coordinate, as generate.py computes it (float64)."""
    return min(max(math.floor((coord - lo) * tiles / (hi - lo)), 0), tiles - 1)


def tile_windows(index, region):
    """The byte windows ``[(offset, length)]`` of the records of every tile
    the region touches: a run per row of tiles, adjacent runs merged."""
    x0, y0, x1, y1 = index["domain"]
    tiles = index["tiles"]
    first, count = index["tile_first"], index["tile_count"]
    lo_x, lo_y = max(region[0], x0), max(region[1], y0)
    hi_x, hi_y = min(region[2], x1), min(region[3], y1)
    if lo_x >= hi_x or lo_y >= hi_y:
        return []
    # Points are < hi: the tile of the largest float below it is the last one.
    tx0, tx1 = tile_of(lo_x, x0, x1, tiles), tile_of(math.nextafter(hi_x, -math.inf), x0, x1, tiles)
    ty0, ty1 = tile_of(lo_y, y0, y1, tiles), tile_of(math.nextafter(hi_y, -math.inf), y0, y1, tiles)
    windows = []
    for ty in range(ty0, ty1 + 1):
        start = first[ty * tiles + tx0]
        end = first[ty * tiles + tx1] + count[ty * tiles + tx1]
        if end == start:
            continue
        offset, length = start * RECORD_BYTES, (end - start) * RECORD_BYTES
        if windows and windows[-1][0] + windows[-1][1] == offset:
            windows[-1] = (windows[-1][0], windows[-1][1] + length)
        else:
            windows.append((offset, length))
    return windows


def grid_dtype(weight):
    return np.dtype("<u8") if weight == "count" else np.dtype("<f8")


def encode(grid):
    """A grid as JSON: dtype, shape and its bytes, zlib'd and base64'd."""
    grid = np.ascontiguousarray(grid)
    return {"dtype": grid.dtype.str, "shape": list(grid.shape),
            "zlib_base64": base64.b64encode(zlib.compress(grid.tobytes(), 1)).decode("ascii")}


def decode(enc):
    raw = zlib.decompress(base64.b64decode(enc["zlib_base64"]))
    return np.frombuffer(raw, dtype=np.dtype(enc["dtype"])).reshape(enc["shape"])
