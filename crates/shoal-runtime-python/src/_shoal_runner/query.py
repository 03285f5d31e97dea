"""Queries next to the data: `map` (or `map_batch`) and `reduce` over a
category's shards, on query workers that keep the decoded documents of their
shards resident between queries (the protocol is described in protocol.rs).

Folding: with `reduce`, each shard's values (map's results that are not
None, in document order) are folded left, the first value being the start:
reduce(reduce(v1, v2), v3). Rust then has one worker `combine` the partials
in shard order the same way. Without `reduce`, the values (None left out) go
back in `values` frames, in document order.
"""

import gc
import json
import os
import signal
import sys
import time

from .failures import describe, text_of
from .process import children_left
from .protocol import json_bytes

QUERY_FRAMES = frozenset(("query", "run", "batch", "end", "combine", "drop", "abort"))
# Mapped values go back in frames of about this size.
_VALUES_FRAME = 1 << 20
# Documents per step of the loop at most; steps adapt to take a few ms.
_MAX_CHUNK = 1 << 16


class Abort(BaseException):
    """Raised inside a query step when Rust aborts the query (SIGINT)."""


class _Stop(Exception):
    """Ends a query step: a document failed and errors are not skipped, or the
    module misbehaved in a way no single document is to blame for."""

    def __init__(self, doc_id, kind, exc=None, message=None):
        Exception.__init__(self, message)
        self.doc_id = doc_id
        self.kind = kind
        self.exc = exc
        self.message = message


# Exceptions that are never a document's failure.
_PASS = (Abort, SystemExit, MemoryError)


class _Unit:
    """One shard of the running query on this worker."""

    __slots__ = ("index", "key", "version", "acc", "have", "errors", "failures", "unreported",
                 "keep", "limit", "ids", "docs", "kept", "failed")

    def __init__(self, index, key, version, keep=0):
        self.index = index
        self.key = key
        self.version = version
        self.acc = None
        self.have = False
        self.errors = 0
        self.failures = []
        self.unreported = 0
        # keep: bytes Rust made room for; 0: do not keep; -1: keep for now
        # (Rust decides once it knows the size).
        self.keep = keep != 0
        self.limit = float("inf") if keep < 0 else keep
        self.ids = [] if self.keep else None
        self.docs = [] if self.keep else None
        self.kept = 0
        self.failed = False

    def allow(self, keep):
        """Rust's (new) answer to whether this shard is kept."""
        if not self.keep or keep < 0:
            return
        if keep == 0 or self.kept > keep:
            self.keep = False
            self.ids = self.docs = None
            self.kept = 0
        else:
            self.limit = keep


class Query:
    """Maps (and reduces) over shards; keeps the decoded documents of the
    shards Rust asks it to keep, so that the next query just loops over them.

    Frames (protocol.rs has the wire format): `query` starts a query (settings,
    evicted shards), `run` maps a resident shard, `batch`... `end` stream a
    shard from storage, `combine` reduces partial results, `drop` forgets
    evicted shards, `abort` ends an aborted query. Every frame but `query` and
    `drop` gets exactly one final reply; `progress` and `values` frames may
    come before it."""

    def __init__(self, worker):
        self.w = worker
        functions = worker.functions
        self.map = functions.get("map")
        self.map_batch = functions.get("map_batch")
        self.reduce = functions.get("reduce")
        # (dataset, shard) -> (version, ids, docs, estimated bytes)
        self.cache = {}
        self.units = {}
        self.fold = False
        self.skip = False
        self.report_every = 1.0
        self.last_report = 0.0
        self.max_failures = 100
        self.chunk = 256
        self.encode = worker.encode
        # The iterator of the document loop running now, for the heartbeat.
        self.it = None
        self.beat_it = None
        self.beat_left = -1
        self.beat_unit = 0
        # A query worker holds many documents: the collector must not walk
        # them over and over. Decoded batches are frozen at once (JSON makes
        # no cycles), automatic collection is off, and what user code leaves
        # behind is collected after each step (a young-generation pass).
        gc.disable()

    def frame(self, kind, msg, tail):
        w = self.w
        if kind == "abort":
            self.units.clear()
            w.aborting = False
            w.send(b'{"kind":"aborted"}')
            return
        if kind == "query":
            self.start(msg)
            return
        if kind == "drop":
            self.drop(msg.get("keys") or ())
            return
        sys.stdout = w.stdout
        sys.stderr = w.stderr
        unit = msg.get("unit")
        reply = None
        signal.setitimer(signal.ITIMER_REAL, self.report_every, self.report_every)
        try:
            w.in_step = True
            if w.aborting:
                # The signal came between frames (while this one was read or
                # parsed): it could not raise, so it is noticed here.
                raise Abort()
            if kind == "run":
                reply = self.run(msg)
            elif kind == "batch":
                reply = self.batch(msg, tail)
            elif kind == "end":
                reply = self.end(msg)
            else:
                reply = self.combine(tail)
            w.in_step = False
        except Abort:
            w.in_step = False
            self.units.clear()
        except _Stop as stop:
            w.in_step = False
            reply = self.failed(unit, stop)
        except SystemExit as e:
            w.in_step = False
            self.fatal(unit, "exited", e, "the query's code called sys.exit(%r)" % (e.code,))
        except MemoryError as e:
            w.in_step = False
            self.units.clear()
            message = "the worker ran out of memory (limit %d MiB, plus room for resident documents)" % w.memory_mb
            self.fatal(unit, "out_of_memory", e, message)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.it = None
        if os.getpid() != w.pid:
            os._exit(0)  # a copy forked by user code returned into the runner
        if children_left():
            self.fatal(unit, "forked", None, "the query's code left child processes running")
        # Output of query code is not kept (a query has no log).
        w.sink.take()
        gc.collect(1)
        if reply is not None:
            w.send(reply)
            self.last_report = time.monotonic()

    def start(self, msg):
        self.units.clear()
        self.fold = bool(msg.get("reduce"))
        self.skip = bool(msg.get("skip"))
        self.report_every = max(0.005, msg.get("report_ms", 1000) / 1000.0)
        self.drop(msg.get("drop") or ())
        self.last_report = time.monotonic()

    def drop(self, keys):
        for dataset, shard, version in keys:
            entry = self.cache.get((dataset, shard))
            if entry is not None and entry[0] == version:
                del self.cache[(dataset, shard)]

    def run(self, msg):
        index = msg["unit"]
        key = tuple(msg["key"])
        entry = self.cache.get(key)
        if entry is None or entry[0] != msg["version"]:
            return b'{"kind":"miss","unit":%d}' % index
        unit = _Unit(index, key, msg["version"])
        self.process(unit, entry[1], entry[2])
        return self.done(unit, entry[3])

    def batch(self, msg, tail):
        index = msg["unit"]
        keep = msg.get("keep", 0)
        unit = self.units.get(index)
        if unit is None:
            unit = self.units[index] = _Unit(index, tuple(msg["key"]), msg["version"], keep)
        else:
            unit.allow(keep)
        if unit.failed:
            return b'{"kind":"skipped","unit":%d}' % index
        try:
            ids, docs = json.loads(tail)
        except ValueError as e:
            raise _Stop(None, "platform", None, "a batch of documents is not valid JSON: %s" % text_of(e))
        gc.freeze()
        size = _estimate(ids, docs)
        self.process(unit, ids, docs)
        if unit.keep:
            unit.kept += size
            if unit.kept > unit.limit:
                # More than Rust made room for: stream the rest without keeping.
                unit.keep = False
                unit.ids = unit.docs = None
                unit.kept = 0
            else:
                unit.ids += ids
                unit.docs += docs
        done, unit.unreported = unit.unreported, 0
        per_doc = size // len(docs) if docs else 0
        return b'{"kind":"ack","unit":%d,"docs":%d,"kept":%d,"per_doc":%d}' % (index, done, unit.kept, per_doc)

    def end(self, msg):
        index = msg["unit"]
        keep = msg.get("keep", 0)
        unit = self.units.pop(index, None)
        if unit is None:  # an empty shard: no batch came
            unit = _Unit(index, tuple(msg["key"]), msg["version"], keep)
        else:
            unit.allow(keep)
        if unit.failed:
            return b'{"kind":"skipped","unit":%d}' % index
        kept = unit.kept + 64 if unit.keep else 0
        reply = self.done(unit, kept)
        if kept:
            self.cache[unit.key] = (unit.version, unit.ids, unit.docs, kept)
            gc.freeze()
        return reply

    def done(self, unit, kept):
        head = b'{"kind":"done","unit":%d,"docs":%d,"errors":%d,"kept":%d' % (
            unit.index,
            unit.unreported,
            unit.errors,
            kept,
        )
        if unit.failures:
            head += b',"failures":' + json_bytes(unit.failures)
        if self.fold and unit.have:
            head += b',"has":true,"partial":' + self.encode_value(unit.acc, "the reduced value")
        return head + b"}"

    def combine(self, tail):
        values = json.loads(tail)
        r = self.reduce
        acc = values[0]
        try:
            for v in values[1:]:
                acc = r(acc, v)
        except _PASS:
            raise
        except BaseException as e:  # noqa: BLE001
            raise _Stop(None, "raised", e)
        return b'{"kind":"combined","result":' + self.encode_value(acc, "the reduced value") + b"}"

    def encode_value(self, value, what):
        try:
            body = self.encode(value).encode("utf-8")
        except _PASS:
            raise
        except BaseException as e:  # noqa: BLE001
            raise _Stop(None, "bad_result", None, "%s is not JSON-serializable: %s" % (what, text_of(e)))
        if len(body) > self.w.max_result:
            raise _Stop(None, "output_limit", None, "%s is %d bytes; the limit is %d" % (what, len(body), self.w.max_result))
        return body

    def failed(self, index, stop):
        if index is not None and index in self.units:
            self.units[index].failed = True
        msg = {"kind": "failed", "unit": index, "doc_id": stop.doc_id, "failure": stop.kind, "fatal": False}
        if stop.exc is not None:
            msg.update(describe(stop.exc, skip_frames=1))
        if stop.message is not None:
            msg["message"] = stop.message
        return json_bytes(msg)

    def fatal(self, index, kind, exc, message):
        msg = {"kind": "failed", "unit": index, "failure": kind, "message": message, "fatal": True}
        if exc is not None:
            msg.update(describe(exc, skip_frames=1))
            msg["message"] = message
        self.w.send(json_bytes(msg))
        os._exit(0)

    def doc_failed(self, unit, doc_id, e, kind="raised", message=None):
        if not self.skip:
            raise _Stop(doc_id, kind, e if kind == "raised" else None, message)
        unit.errors += 1
        if len(unit.failures) < self.max_failures:
            failure = {"id": doc_id, "failure": kind}
            if kind == "raised":
                failure.update(describe(e, skip_frames=1))
            else:
                failure["exception"] = type(e).__name__
            if message is not None:
                failure["message"] = message
            unit.failures.append(failure)

    def send_in_step(self, data):
        w = self.w
        w.in_step = False
        w.send(data)
        w.in_step = True
        self.last_report = time.monotonic()
        if w.aborting:
            raise Abort()

    def process(self, unit, ids, docs):
        """Runs map over `docs` in steps that take a few milliseconds each,
        reporting progress often enough for Rust's timeout."""
        n = len(docs)
        self.beat_unit = unit.index
        if self.map_batch is not None:
            step = self.fold_batch if self.fold else self.collect_batch
        else:
            step = self.fold_map if self.fold else self.collect_map
        batch = self.map_batch is not None
        mono = time.monotonic
        w = self.w
        i = 0
        while i < n:
            chunk = self.chunk
            j = i + chunk
            # map_batch gets its own list; map only reads the shared one.
            part = docs if (i == 0 and j >= n and not batch) else docs[i:j]
            t0 = mono()
            step(unit, part, ids, i)
            self.it = None
            t1 = mono()
            if t1 - t0 < 0.004:
                if chunk < _MAX_CHUNK:
                    self.chunk = chunk * 2
            elif t1 - t0 > 0.04 and chunk > 1:
                self.chunk = chunk // 2
            i += len(part)
            unit.unreported += len(part)
            if w.aborting:
                raise Abort()
            if i < n and t1 - self.last_report >= self.report_every:
                self.send_in_step(b'{"kind":"progress","unit":%d,"docs":%d}' % (unit.index, unit.unreported))
                unit.unreported = 0

    def fold_map(self, unit, part, ids, base):
        f = self.map
        r = self.reduce
        acc = unit.acc
        have = unit.have
        it = self.it = iter(part)
        while True:
            try:
                for doc in it:
                    v = f(doc)
                    if v is not None:
                        if have:
                            acc = r(acc, v)
                        else:
                            acc = v
                            have = True
                break
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001 - a document's failure
                unit.acc = acc
                unit.have = have
                self.doc_failed(unit, ids[base + len(part) - it.__length_hint__() - 1], e)
        unit.acc = acc
        unit.have = have

    def collect_map(self, unit, part, ids, base):
        f = self.map
        out = []
        append = out.append
        it = self.it = iter(part)
        while True:
            try:
                for doc in it:
                    v = f(doc)
                    if v is not None:
                        append(v)
                break
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001
                self.doc_failed(unit, ids[base + len(part) - it.__length_hint__() - 1], e)
        if out:
            self.send_values(unit, out, part, ids, base)

    def fold_batch(self, unit, part, ids, base):
        values = self.batch_values(unit, part, ids, base)
        r = self.reduce
        acc = unit.acc
        have = unit.have
        it = self.it = iter(values)
        while True:
            try:
                for v in it:
                    if v is not None:
                        if have:
                            acc = r(acc, v)
                        else:
                            acc = v
                            have = True
                break
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001
                unit.acc = acc
                unit.have = have
                self.doc_failed(unit, ids[base + len(values) - it.__length_hint__() - 1], e)
        unit.acc = acc
        unit.have = have

    def collect_batch(self, unit, part, ids, base):
        values = self.batch_values(unit, part, ids, base)
        out = [v for v in values if v is not None]
        if out:
            self.send_values(unit, out, part, ids, base)

    def batch_values(self, unit, part, ids, base):
        try:
            values = self.map_batch(part)
        except _PASS:
            raise
        except BaseException as e:  # noqa: BLE001
            return self.batch_one_by_one(unit, part, ids, base, e)
        return self.checked(values, len(part))

    def checked(self, values, n):
        try:
            if values.__class__ is not list:
                values = list(values)
        except _PASS:
            raise
        except BaseException as e:  # noqa: BLE001
            raise _Stop(None, "bad_result", None, "map_batch must return a list: %s" % text_of(e))
        if len(values) != n:
            raise _Stop(None, "bad_result", None, "map_batch returned %d values for %d documents" % (len(values), n))
        return values

    def batch_one_by_one(self, unit, part, ids, base, error):
        """map_batch raised: find the documents to blame, one call each."""
        mb = self.map_batch
        values = []
        blamed = False
        for k, doc in enumerate(part):
            try:
                one = mb([doc])
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001
                blamed = True
                self.doc_failed(unit, ids[base + k], e)
                values.append(None)
                continue
            values.append(self.checked(one, 1)[0])
        if not blamed:
            raise _Stop(None, "raised", error)
        return values

    def send_values(self, unit, out, part, ids, base):
        try:
            body = self.encode(out).encode("utf-8")
        except _PASS:
            raise
        except BaseException:  # noqa: BLE001
            body = self.values_one_by_one(unit, part, ids, base)
            if body is None:
                return
        if len(body) > _VALUES_FRAME:
            self.chunk = max(1, self.chunk // 2)
            if len(out) > 1:
                half = len(out) // 2
                self.send_encoded(unit, out[:half])
                self.send_encoded(unit, out[half:])
                return
        self.send_body(unit, body)

    def send_encoded(self, unit, out):
        body = self.encode(out).encode("utf-8")
        if len(body) > _VALUES_FRAME and len(out) > 1:
            half = len(out) // 2
            self.send_encoded(unit, out[:half])
            self.send_encoded(unit, out[half:])
            return
        self.send_body(unit, body)

    def send_body(self, unit, body):
        if len(body) > self.w.max_result + 2:
            message = "a mapped value is %d bytes; the limit is %d" % (len(body) - 2, self.w.max_result)
            raise _Stop(None, "output_limit", None, message)
        self.send_in_step(b'{"kind":"values","unit":%d}' % unit.index + body)

    def values_one_by_one(self, unit, part, ids, base):
        """Some value is not JSON: find its document. Documents whose map
        raised were counted already and are left out quietly."""
        encode = self.encode
        pieces = []
        for k, doc in enumerate(part):
            try:
                if self.map_batch is not None:
                    v = self.checked(self.map_batch([doc]), 1)[0]
                else:
                    v = self.map(doc)
            except _PASS:
                raise
            except _Stop:
                raise
            except BaseException:  # noqa: BLE001
                continue
            if v is None:
                continue
            try:
                pieces.append(encode(v).encode("utf-8"))
            except _PASS:
                raise
            except BaseException as e:  # noqa: BLE001
                message = "the mapped value is not JSON-serializable: %s" % text_of(e)
                self.doc_failed(unit, ids[base + k], e, "bad_result", message)
        if not pieces:
            return None
        return b"[" + b",".join(pieces) + b"]"


def _deep_size(o, getsizeof=sys.getsizeof):
    """Bytes held by a decoded JSON value (dict keys are shared, not counted)."""
    c = o.__class__
    if c is dict:
        size = getsizeof(o)
        for v in o.values():
            size += _deep_size(v)
        return size
    if c is list:
        size = getsizeof(o)
        for v in o:
            size += _deep_size(v)
        return size
    if o is None or o is True or o is False or (c is int and -5 <= o <= 256):
        return 0  # shared singletons
    return getsizeof(o)


def _estimate(ids, docs):
    """Estimated memory of a batch of decoded documents, from a sample."""
    n = len(docs)
    if not n:
        return 0
    step = n // 8 or 1
    total = 0
    count = 0
    for k in range(0, n, step):
        total += _deep_size(docs[k])
        count += 1
        if count == 8:
            break
    # + the id and two list slots
    return int((total / count + sys.getsizeof(ids[0]) + 16) * n)
