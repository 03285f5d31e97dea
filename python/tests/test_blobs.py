"""Tests of the Python client's blob methods against a real node.

Run by crates/shoal/tests/blobs.rs (on the embedded store and on Redis),
which starts a node and passes SHOAL_URL and SHOAL_TOKEN; by hand:

    SHOAL_URL=http://127.0.0.1:7700 SHOAL_TOKEN=$(cat .shoal/admin.token) \
        PYTHONPATH=python python3 python/tests/test_blobs.py -v
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import sys
import tempfile
import tracemalloc
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shoal import Client, ShoalError  # noqa: E402

URL = os.environ.get("SHOAL_URL", "")
TOKEN = os.environ.get("SHOAL_TOKEN", "")

MIB = 1 << 20


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class Generated(io.RawIOBase):
    """A binary file of ``size`` pseudo-random bytes that is never in memory
    whole: each read makes the piece asked for."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.pos = 0
        self.rng = random.Random(seed)
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        n = min(len(buf), self.size - self.pos)
        piece = self.rng.randbytes(n)
        buf[:n] = piece
        self.sha.update(piece)
        self.pos += n
        return n


class BlobTest(unittest.TestCase):
    client: Client

    @classmethod
    def setUpClass(cls) -> None:
        if not URL or not TOKEN:
            raise unittest.SkipTest("SHOAL_URL and SHOAL_TOKEN must name a running node")
        cls.client = Client(URL, TOKEN)

    def code(self, cm: "unittest.case._AssertRaisesContext") -> tuple:
        return (cm.exception.status, cm.exception.code)

    def test_put_bytes_then_ranges(self) -> None:
        k = unique("py/bytes") + "/a b?.bin"
        body = data(3 * MIB + 77, 1)
        meta = self.client.put_blob(k, body, content_type="application/x-rec")
        self.assertEqual(meta["key"], k)
        self.assertEqual(meta["size"], len(body))
        self.assertEqual(meta["sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(meta["etag"], meta["sha256"])
        self.assertEqual(meta["content_type"], "application/x-rec")
        self.assertFalse(meta["fixed_size"])
        self.assertEqual(self.client.get_blob(k), body)
        # Slices, as data[start:end], across the 1 MiB chunk edges.
        for start, end in [(0, 10), (MIB - 5, MIB + 5), (MIB - 1, 2 * MIB + 1), (len(body) - 3, len(body))]:
            self.assertEqual(self.client.get_blob(k, start, end), body[start:end], (start, end))
        self.assertEqual(self.client.get_blob(k, len(body) - 10), body[-10:])
        self.assertEqual(self.client.get_blob(k, -10), body[-10:])
        self.assertEqual(self.client.get_blob(k, None, 5), body[:5])
        self.assertEqual(self.client.get_blob(k, 10, 10**12), body[10:])
        with self.assertRaises(ShoalError) as cm:
            self.client.get_blob(k, len(body))
        self.assertEqual(self.code(cm), (416, "range_not_satisfiable"))
        self.assertIn(f"({len(body)} bytes)", str(cm.exception))
        with self.assertRaises(ValueError):
            self.client.get_blob(k, 5, 5)
        meta2 = self.client.blob_meta(k)
        self.assertEqual((meta2["size"], meta2["etag"], meta2["version"]), (len(body), meta["etag"], meta["version"]))
        # The connection pool survives a 416 and a ranged read.
        self.assertEqual(self.client.get_blob(k, 0, 3), body[:3])

    def test_put_streams_files_paths_and_iterables(self) -> None:
        k = unique("py/stream")
        # A 24 MiB file object that is never whole in memory: the upload
        # holds at most a few pieces at a time.
        src = Generated(24 * MIB, 2)
        tracemalloc.start()
        try:
            meta = self.client.put_blob(k, src)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(meta["size"], 24 * MIB)
        self.assertEqual(meta["sha256"], src.sha.hexdigest())
        self.assertLess(peak, 4 * MIB, f"the upload held {peak} bytes")
        # A path, and download_blob into a file (whole and a slice).
        body = data(2 * MIB + 5, 3)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "in.bin")
            with open(path, "wb") as f:
                f.write(body)
            self.assertEqual(self.client.put_blob(k + "/path", path)["sha256"], hashlib.sha256(body).hexdigest())
            out = os.path.join(d, "out.bin")
            self.assertEqual(self.client.download_blob(k + "/path", out), len(body))
            with open(out, "rb") as f:
                self.assertEqual(f.read(), body)
            self.assertEqual(self.client.download_blob(k + "/path", out, MIB, MIB + 100), 100)
            with open(out, "rb") as f:
                self.assertEqual(f.read(), body[MIB : MIB + 100])
            # A failed download leaves the file as it was, and no .part.
            with self.assertRaises(ShoalError) as cm:
                self.client.download_blob(k + "/missing", out)
            self.assertEqual(self.code(cm), (404, "blob_not_found"))
            with open(out, "rb") as f:
                self.assertEqual(f.read(), body[MIB : MIB + 100])
            self.assertEqual(sorted(os.listdir(d)), ["in.bin", "out.bin"])
        # An iterable of bytes.
        parts = [b"abc", b"", b"def" * 1000]
        self.assertEqual(self.client.put_blob(k + "/iter", iter(parts))["size"], 3003)
        self.assertEqual(self.client.get_blob(k + "/iter"), b"".join(parts))
        with self.assertRaises(TypeError):
            self.client.put_blob(k, 42)

    def test_list_meta_delete(self) -> None:
        p = unique("py/list") + "/"
        keys = [f"{p}{i:02}" for i in range(13)]
        for i, key in enumerate(keys):
            self.client.put_blob(key, bytes([i]) * (i + 1))
        listed = list(self.client.list_blobs(p))
        self.assertEqual([b["key"] for b in listed], keys)
        self.assertEqual([b["size"] for b in listed], list(range(1, 14)))
        self.assertEqual([b["key"] for b in self.client.list_blobs(p, limit=4)], keys[:4])
        self.assertEqual(self.client.blob_meta(keys[3])["size"], 4)
        self.client.delete_blob(keys[3])
        with self.assertRaises(ShoalError) as cm:
            self.client.delete_blob(keys[3])
        self.assertEqual(self.code(cm), (404, "blob_not_found"))
        with self.assertRaises(ShoalError) as cm:
            self.client.blob_meta(keys[3])
        self.assertEqual(self.code(cm), (404, "blob_not_found"))
        with self.assertRaises(ShoalError) as cm:
            self.client.get_blob(keys[3])
        self.assertEqual(self.code(cm), (404, "blob_not_found"))
        self.assertEqual(len(list(self.client.list_blobs(p))), 12)
        # A key that is a prefix of others is found by blob_meta exactly.
        self.client.put_blob(p + "0", b"x")
        self.assertEqual(self.client.blob_meta(p + "0")["size"], 1)
        with self.assertRaises(ShoalError):
            self.client.blob_meta(p)

    def test_pixel_board(self) -> None:
        k = unique("py/board")
        board = self.client.create_fixed_blob(k, 500_000)
        self.assertTrue(board["fixed_size"])
        self.assertEqual(board["size"], 500_000)
        self.assertNotIn("sha256", board)

        def px(x: int, y: int) -> str:
            return f"#{y * 1000 + x}"

        r = self.client.bitfield(
            k,
            [
                {"op": "set", "type": "u4", "offset": px(10, 20), "value": 7},
                {"op": "get", "type": "u4", "offset": px(10, 20)},
                {"op": "incrby", "type": "u4", "offset": px(10, 20), "by": 9, "overflow": "sat"},
                {"op": "incrby", "type": "u4", "offset": px(10, 20), "by": 1, "overflow": "fail"},
                {"op": "write_at", "offset": 0, "data": b"\xab\xcd"},
            ],
        )
        self.assertEqual(r["results"], [0, 7, 15, None, None])
        self.assertEqual(r["etag"], f"v{r['version']}")
        self.assertGreater(r["version"], board["version"])
        # Pixel 20010 is the high nibble of byte 10005.
        self.assertEqual(self.client.get_blob(k, 10005, 10006), b"\xf0")
        self.assertEqual(self.client.get_blob(k, 0, 2), b"\xab\xcd")
        # A failing batch changes nothing.
        with self.assertRaises(ShoalError) as cm:
            self.client.bitfield(
                k,
                [
                    {"op": "set", "type": "u4", "offset": px(0, 0), "value": 1},
                    {"op": "set", "type": "u4", "offset": "#1000000", "value": 1},
                ],
            )
        self.assertEqual(self.code(cm), (400, "invalid_input"))
        self.assertEqual(self.client.get_blob(k, 0, 2), b"\xab\xcd")
        self.assertEqual(self.client.blob_meta(k)["version"], r["version"])
        # if_absent keeps it; a plain create replaces it zero-filled.
        with self.assertRaises(ShoalError) as cm:
            self.client.create_fixed_blob(k, 10, if_absent=True)
        self.assertEqual(self.code(cm), (412, "precondition_failed"))
        self.assertEqual(self.client.blob_meta(k)["size"], 500_000)
        self.client.create_fixed_blob(k, 10)
        self.assertEqual(self.client.get_blob(k), bytes(10))
        # Bit operations apply to fixed-size blobs only.
        self.client.put_blob(k + "/up", b"abc")
        with self.assertRaises(ShoalError) as cm:
            self.client.bitfield(k + "/up", [{"op": "get", "type": "u8", "offset": 0}])
        self.assertEqual(self.code(cm), (409, "not_fixed_size"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
