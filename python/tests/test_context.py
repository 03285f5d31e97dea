"""Unit tests of `shoal.Context` and `shoal.HostError` as a function's author
uses them in tests (no node needed): `pytest python/tests/test_context.py`."""

import datetime
import importlib
import os
import sys
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import shoal  # noqa: E402
from shoal import Context, HostError  # noqa: E402


class Recorder:
    """A test host: records calls, answers from a dict of op -> answer."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, op, args):
        self.calls.append((op, args))
        answer = self.answers[op]
        if isinstance(answer, HostError):
            raise answer
        return answer


def test_importing_context_does_not_import_the_http_client():
    code = "import sys, shoal; from shoal import Context; print('shoal.client' in sys.modules)"
    import subprocess

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert shoal.Client.__name__ == "Client"


def test_methods_build_the_operations_arguments():
    host = Recorder(
        {
            "spawn": {"id": "i-1"},
            "map": {"job": "j-1"},
            "send": {"id": "m-1"},
            "put_docs": {"ids": ["a", "b"]},
            "get_doc": {"doc": {"x": 1}},
            "job": {"status": "running"},
            "job_results": {"results": [{"index": 0, "output": 1}]},
        }
    )
    ctx = Context(host=host)
    assert ctx.spawn("f", {"n": 1}) == {"id": "i-1"}
    assert ctx.map("f", (x for x in [1, 2]), then="g") == "j-1"
    assert ctx.send("q", "body", delay=datetime.timedelta(seconds=2), dedup_id="d") == {"id": "m-1"}
    assert ctx.put_docs("c", [("a", {"x": 1}), {"x": 2}]) == ["a", "b"]
    assert ctx.get("c", "a") == {"x": 1}
    assert ctx.job("j-1") == {"status": "running"}
    assert list(ctx.results("j-1")) == [{"index": 0, "output": 1}]
    assert host.calls == [
        ("spawn", {"function": "f", "event": {"n": 1}}),
        ("map", {"function": "f", "events": [1, 2], "then": "g"}),
        ("send", {"queue": "q", "body": "body", "delay_ms": 2000, "dedup_id": "d"}),
        ("put_docs", {"category": "c", "docs": [{"id": "a", "doc": {"x": 1}}, {"id": None, "doc": {"x": 2}}]}),
        ("get_doc", {"category": "c", "id": "a"}),
        ("job", {"job": "j-1"}),
        ("job_results", {"job": "j-1", "offset": 0, "limit": 1000}),
    ]


def test_ctx_kv_builds_the_kv_operations_arguments():
    entry = {"expires_at_ms": None, "key": "k", "updated_at_ms": 1, "value": 5, "version": 3}
    host = Recorder(
        {
            "kv_get": {"entry": entry},
            "kv_set": {"entry": entry, "written": False},
            "kv_incr": {"entry": dict(entry, value=6)},
            "kv_delete": {"deleted": True},
            "kv_list": {"entries": [entry], "next": None},
        }
    )
    ctx = Context(host=host)
    assert ctx.kv.get("k") == 5
    assert ctx.kv.entry("k") == entry
    # A refused condition is None, not an exception: the cooldown reads
    # `if ctx.kv.set(...)`.
    assert ctx.kv.set("k", True, ttl=datetime.timedelta(minutes=1), nx=True) is None
    assert ctx.kv.incr("k") == 6
    assert ctx.kv.delete("k", version=3) is True
    assert list(ctx.kv.list("k")) == [entry]
    assert host.calls == [
        ("kv_get", {"key": "k"}),
        ("kv_get", {"key": "k"}),
        ("kv_set", {"key": "k", "value": True, "ttl_ms": 60000, "nx": True, "xx": False, "version": None}),
        ("kv_incr", {"key": "k", "by": 1}),
        ("kv_delete", {"key": "k", "version": 3}),
        ("kv_list", {"prefix": "k", "cursor": None, "limit": 1000}),
    ]
    with pytest.raises(TypeError):
        ctx.kv.set("k", 1, ttl="1h")


def test_errors_of_the_host_reach_the_handler():
    ctx = Context(host=Recorder({"send": HostError("queue_not_found", "queue `q` not found")}))
    with pytest.raises(ctx.HostError) as raised:
        ctx.send("q", 1)
    assert (raised.value.code, raised.value.message) == ("queue_not_found", "queue `q` not found")
    assert str(raised.value) == "queue_not_found: queue `q` not found"
    with pytest.raises(HostError) as raised:
        Context().spawn("f")
    assert raised.value.code == "no_host"


def test_bad_delays_are_refused_before_calling():
    ctx = Context(host=Recorder({}))
    with pytest.raises(TypeError):
        ctx.send("q", 1, delay="soon")
    with pytest.raises(TypeError):
        ctx.send("q", 1, delay=True)
    with pytest.raises(ValueError):
        ctx.send("q", 1, delay=-1)


def test_attributes_and_remaining_time():
    ctx = Context(invocation_id="i-9", function_name="f", version=4, attempt=2, timeout_ms=2000)
    assert (ctx.invocation_id, ctx.function_name, ctx.version, ctx.attempt) == ("i-9", "f", 4, 2)
    assert 0 < ctx.remaining_time_ms() <= 2000
    assert repr(ctx) == "Context(invocation_id='i-9', function_name='f', version=4, attempt=2)"


def test_inside_a_worker_the_runtimes_classes_are_handed_out():
    runtime = types.ModuleType("_shoal_runner.context")

    class RuntimeContext:
        pass

    class RuntimeError_(Exception):
        pass

    runtime.Context, runtime.HostError = RuntimeContext, RuntimeError_
    # (In a run with the runner's own tests, the real one may be loaded.)
    saved = sys.modules.pop("_shoal_runner.context", None)
    sys.modules["_shoal_runner.context"] = runtime
    try:
        module = importlib.reload(importlib.import_module("shoal.context"))
        assert module.Context is RuntimeContext
        assert module.HostError is RuntimeError_
    finally:
        del sys.modules["_shoal_runner.context"]
        module = importlib.reload(importlib.import_module("shoal.context"))
        if saved is not None:
            sys.modules["_shoal_runner.context"] = saved
    assert module.Context.__module__ == "shoal"
