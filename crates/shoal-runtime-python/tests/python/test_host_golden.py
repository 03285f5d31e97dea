"""The runner's host calls against the golden files of the host-call
protocol (`crates/shoal-runtime/tests/golden/host/`, see its README): each
case's call, made through a worker's `Context`, must send the golden frame
byte for byte, and the golden reply must come back as the case says. The
Rust side decodes the same frames (crate shoal-runtime, tests/golden.rs)."""

import datetime
import json
import os

import pytest

from conftest import GOLDEN, Channel
from _shoal_runner import protocol
from _shoal_runner.context import HostError


def _golden_files():
    return sorted(name for name in os.listdir(GOLDEN) if name.endswith(".json"))


def _cases():
    for name in _golden_files():
        with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
            golden = json.load(f)
        for case in golden["cases"]:
            yield pytest.param(golden, case, id="%s: %s" % (name, case["name"]))


def _python_value(v):
    """A case's argument: JSON, with the few Python-only values spelled
    `{"$tuple": [...]}`, `{"$timedelta": seconds}`, `{"$iter": [...]}`,
    `{"$bytes_hex": "00ff"}`."""
    if isinstance(v, list):
        return [_python_value(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1:
            (key, inner), = v.items()
            if key == "$tuple":
                return tuple(_python_value(x) for x in inner)
            if key == "$timedelta":
                return datetime.timedelta(seconds=inner)
            if key == "$iter":
                return iter([_python_value(x) for x in inner])
            if key == "$bytes_hex":
                return bytes.fromhex(inner)
        return {k: _python_value(x) for k, x in v.items()}
    return v


def test_every_file_speaks_this_runners_version():
    files = _golden_files()
    assert files
    for name in files:
        with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
            assert json.load(f)["version"] == protocol.HOST_PROTOCOL, name


@pytest.mark.parametrize("golden, case", list(_cases()))
def test_calls_send_the_golden_frame_and_read_the_golden_reply(golden, case):
    channel = Channel()
    try:
        ctx = channel.context()
        channel.reply(case["reply"].encode("utf-8"))
        call = case["python"]
        method = getattr(ctx, call["method"])
        args = _python_value(call.get("args", []))
        kwargs = _python_value(call.get("kwargs", {}))
        if "raises" in case:
            with pytest.raises(HostError) as raised:
                _finish(method(*args, **kwargs))
            assert raised.value.code == case["raises"]["code"]
            assert raised.value.message == case["raises"]["message"]
        else:
            assert _finish(method(*args, **kwargs)) == _python_value(case["returns"])
        assert channel.sent() == case["frame"].encode("utf-8")
    finally:
        channel.close()


def _finish(value):
    # `results` is a generator: the call happens as it is consumed.
    if hasattr(value, "__next__"):
        return list(value)
    return value


def test_sequence_numbers_count_up_per_worker(channel):
    ctx = channel.context()
    for n in (1, 2, 3):
        channel.reply(b'{"kind":"host_reply","seq":%d,"result":{"doc":null}}' % n)
        assert ctx.get("c", "id") is None
        assert channel.sent() == b'{"kind":"host","seq":%d,"op":"get_doc","args":{"category":"c","id":"id"}}' % n


def test_arguments_over_the_limit_are_refused_before_sending():
    channel = Channel(max_result=64)
    try:
        ctx = channel.context()
        with pytest.raises(HostError) as raised:
            ctx.spawn("f", "x" * 64)
        assert raised.value.code == "too_large"
        assert "the limit is 64" in raised.value.message
        channel.peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            channel.peer.recv(1)
    finally:
        channel.close()


def test_a_context_whose_invocation_ended_cannot_call(channel):
    ctx = channel.context()
    channel.context()  # the next invocation
    with pytest.raises(HostError) as raised:
        ctx.job("j")
    assert raised.value.code == "invocation_ended"
