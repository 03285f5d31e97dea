"""Query folding (`_shoal_runner.query`): map/reduce and map_batch over a
shard's documents, driven by the frames Rust sends, checked on the frames
the worker sends back.

Folding is left to right in document order, starting from the first value
(no initial value): reduce(reduce(v1, v2), v3). None values are dropped.
"""

import gc
import json
import os
import signal
import sys

import pytest

from _shoal_runner import capture, protocol, query


class Worker:
    """What a query needs of its worker; frames sent are collected."""

    def __init__(self, map=None, map_batch=None, reduce=None, max_result=1 << 20):
        self.functions = {"map": map, "map_batch": map_batch, "reduce": reduce}
        self.encode = protocol.encoder()
        self.frames = []
        self.aborting = False
        self.in_step = False
        self.pid = os.getpid()
        self.memory_mb = 256
        self.max_result = max_result
        self.sink = capture.Sink(None, 1 << 20)
        self.stdout = capture.Writer(self.sink, 1)
        self.stderr = capture.Writer(self.sink, 2)

    def send(self, data):
        self.frames.append(data)


@pytest.fixture(autouse=True)
def runner_state(monkeypatch):
    """A query turns the collector off, installs stdout/stderr and arms a
    heartbeat timer: all of it is put back after each test."""
    saved = sys.stdout, sys.stderr
    beat = signal.signal(signal.SIGALRM, lambda *_: None)
    monkeypatch.setattr(query, "children_left", lambda: False)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, beat)
    sys.stdout, sys.stderr = saved
    gc.unfreeze()
    gc.enable()


def decode(frame):
    """A frame sent by the worker: its JSON head and its raw tail."""
    head, end = json.JSONDecoder().raw_decode(frame.decode("utf-8"))
    return head, frame[len(frame.decode("utf-8")[:end].encode("utf-8")) :]


def shard_docs(n, field=lambda i: i):
    ids = ["d%03d" % i for i in range(n)]
    docs = [{"n": i, "v": field(i)} for i in range(n)]
    return ids, docs


def run(worker, shards, reduce=True, skip=False, chunk=None, batch_size=None, keep=0):
    """Streams each shard in batches, as Rust does; returns the worker and
    its query, whose frames are in `worker.frames`."""
    q = query.Query(worker)
    if chunk is not None:
        q.chunk = chunk
    q.frame("query", {"kind": "query", "reduce": reduce, "skip": skip, "report_ms": 60000, "drop": []}, b"")
    for unit, (ids, docs) in enumerate(shards):
        key = ["ds", unit]
        size = batch_size or max(1, len(docs))
        for start in range(0, len(docs), size):
            tail = json.dumps([ids[start : start + size], docs[start : start + size]]).encode("utf-8")
            msg = {"kind": "batch", "unit": unit, "key": key, "version": 1, "keep": keep}
            q.frame("batch", msg, tail)
        q.frame("end", {"kind": "end", "unit": unit, "key": key, "version": 1, "keep": keep}, b"")
    return q


def replies(worker, kind):
    return [decode(f)[0] for f in worker.frames if decode(f)[0]["kind"] == kind]


def partials(worker):
    return [d.get("partial", "<none>") for d in replies(worker, "done")]


def test_reduce_folds_left_in_document_order():
    w = Worker(map=lambda d: d["v"], reduce=lambda a, b: a + b)
    ids, docs = shard_docs(10, field=lambda i: "abcdefghij"[i])
    run(w, [(ids, docs)], chunk=3, batch_size=4)  # steps and batches cut the shard
    assert partials(w) == ["abcdefghij"]
    done = replies(w, "done")[0]
    acked = sum(a["docs"] for a in replies(w, "ack"))
    assert acked + done["docs"] == 10
    assert done["errors"] == 0


def test_the_first_value_starts_the_fold_and_none_is_dropped():
    w = Worker(map=lambda d: None if d["n"] % 2 else d["n"], reduce=lambda a, b: [a, b])
    run(w, [shard_docs(7)], chunk=2)
    assert partials(w) == [[[[0, 2], 4], 6]]


def test_a_shard_without_values_has_no_partial():
    w = Worker(map=lambda d: None, reduce=lambda a, b: a + b)
    run(w, [shard_docs(5), ([], [])])
    done = replies(w, "done")
    assert [("has" in d, "partial" in d) for d in done] == [(False, False), (False, False)]
    assert [d["unit"] for d in done] == [0, 1]


def test_each_shard_is_folded_on_its_own():
    w = Worker(map=lambda d: d["v"], reduce=lambda a, b: a + b)
    run(w, [shard_docs(3, str), shard_docs(2, lambda i: "xy"[i])])
    assert partials(w) == ["012", "xy"]


def test_map_batch_folds_like_map():
    def map_batch(docs):
        return [d["v"] if d["n"] % 3 else None for d in docs]

    w = Worker(map_batch=map_batch, reduce=lambda a, b: a + "," + b)
    run(w, [shard_docs(8, str)], chunk=3, batch_size=5)
    assert partials(w) == ["1,2,4,5,7"]


def test_map_batch_must_return_one_value_per_document():
    w = Worker(map_batch=lambda docs: docs[:1], reduce=lambda a, b: a)
    run(w, [shard_docs(3)])
    failed = replies(w, "failed")[0]
    assert failed["failure"] == "bad_result"
    assert failed["message"] == "map_batch returned 1 values for 3 documents"
    assert failed["fatal"] is False


def test_combine_reduces_partials_in_order():
    w = Worker(map=lambda d: d, reduce=lambda a, b: [a, b])
    q = query.Query(w)
    q.frame("combine", {"kind": "combine"}, b'["p0","p1","p2"]')
    (combined,) = replies(w, "combined")
    assert combined["result"] == [["p0", "p1"], "p2"]


def test_without_reduce_values_come_back_in_document_order_without_none():
    w = Worker(map=lambda d: None if d["n"] % 4 == 0 else {"n": d["n"]})
    run(w, [shard_docs(10)], reduce=False, chunk=3, batch_size=4)
    values = []
    for frame in w.frames:
        head, tail = decode(frame)
        if head["kind"] == "values":
            assert head["unit"] == 0
            values += json.loads(tail)
    assert values == [{"n": i} for i in range(10) if i % 4]
    assert "partial" not in replies(w, "done")[0]


def test_skipped_failures_are_counted_and_the_rest_still_folds():
    def map(d):
        if d["n"] in (2, 5):
            raise ValueError("bad %d" % d["n"])
        return d["n"]

    w = Worker(map=map, reduce=lambda a, b: a + b)
    run(w, [shard_docs(7)], skip=True, chunk=2)
    done = replies(w, "done")[0]
    assert done["partial"] == 0 + 1 + 3 + 4 + 6
    assert done["errors"] == 2
    assert [(f["id"], f["failure"], f["exception"], f["message"]) for f in done["failures"]] == [
        ("d002", "raised", "ValueError", "bad 2"),
        ("d005", "raised", "ValueError", "bad 5"),
    ]
    assert "in map" in done["failures"][0]["traceback"]


def test_without_skip_the_first_failure_stops_the_shard_and_names_the_document():
    def map(d):
        if d["n"] == 3:
            raise KeyError("no field")
        return 1

    w = Worker(map=map, reduce=lambda a, b: a + b)
    run(w, [shard_docs(6)], batch_size=2)
    (failed,) = replies(w, "failed")
    assert (failed["doc_id"], failed["failure"], failed["exception"]) == ("d003", "raised", "KeyError")
    # The shard's later frames (a batch, the end) are answered, not folded.
    assert replies(w, "skipped") == [{"kind": "skipped", "unit": 0}] * 2
    assert replies(w, "done") == []


def test_a_kept_shard_is_folded_again_from_memory():
    calls = []

    def map(d):
        calls.append(d["n"])
        return d["v"]

    w = Worker(map=map, reduce=lambda a, b: a + b)
    q = run(w, [shard_docs(4, str)], keep=-1)
    assert partials(w) == ["0123"]
    assert replies(w, "done")[0]["kept"] > 0
    w.frames.clear()
    q.frame("query", {"kind": "query", "reduce": True, "skip": False, "report_ms": 60000, "drop": []}, b"")
    q.frame("run", {"kind": "run", "unit": 0, "key": ["ds", 0], "version": 1}, b"")
    assert partials(w) == ["0123"]
    assert calls == [0, 1, 2, 3] * 2
    # Another version of the shard is not resident.
    q.frame("run", {"kind": "run", "unit": 1, "key": ["ds", 0], "version": 2}, b"")
    assert replies(w, "miss") == [{"kind": "miss", "unit": 1}]


def test_a_reduced_value_that_is_not_json_fails_the_shard():
    w = Worker(map=lambda d: d["n"], reduce=lambda a, b: {"seen": {b}})
    run(w, [shard_docs(3)])
    (failed,) = replies(w, "failed")
    assert failed["failure"] == "bad_result"
    assert failed["message"].startswith("the reduced value is not JSON-serializable")
