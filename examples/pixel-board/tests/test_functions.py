"""Unit tests of the pixel board's functions (pytest): the rules in
``functions/pixel-api/pixel.py`` and both handlers against a fake node (a
``shoal.Context`` whose host calls are answered here). The end-to-end test
in a browser is ``crates/shoal/tests/pixel_board.rs``."""

import importlib.util
import json
import os
import sys
import time
import zlib

import pytest
from shoal import Context, HostError

HERE = os.path.dirname(os.path.abspath(__file__))
FUNCTIONS = os.path.join(os.path.dirname(HERE), "functions")
sys.path.insert(0, os.path.join(FUNCTIONS, "pixel-api"))

import pixel  # noqa: E402


def load(function, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(FUNCTIONS, function, "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


api = load("pixel-api", "pixel_api_main")
board_fn = load("pixel-board", "pixel_board_main")
KEY = "k" * 43


# ---- the rules ----


def test_a_signed_name_verifies_only_under_its_key():
    value = pixel.sign("alice", KEY)
    assert value.startswith("alice.")
    assert pixel.verify(value, KEY) == "alice"
    assert pixel.verify(value, "another key") is None


@pytest.mark.parametrize("value", [
    None, "", "alice", "alice.", ".sig", 42,
    "bob." + pixel.sign("alice", KEY).split(".", 1)[1],   # alice's signature on bob
    pixel.sign("alice", KEY) + "x",                       # a longer signature
    pixel.sign("alice", KEY)[:-1],                        # a shorter one
    "al ice." + pixel.sign("alice", KEY).split(".", 1)[1],
])
def test_forged_or_malformed_cookies_are_nobody(value):
    assert pixel.verify(value, KEY) is None


@pytest.mark.parametrize("name", ["a", "alice", "Bob_2", "x-y", "z" * 24])
def test_good_names(name):
    assert pixel.check_name(name) == name


@pytest.mark.parametrize("name", [None, "", "z" * 25, "a b", "a.b", "é", "a;b", 7, ["a"]])
def test_bad_names(name):
    with pytest.raises(pixel.Invalid):
        pixel.check_name(name)


def test_the_cookie_is_http_only_and_same_site():
    line = pixel.set_cookie("alice.SIG")
    assert line.startswith("pixel_user=alice.SIG;")
    for part in ("Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=2592000"):
        assert part in line.split("; ")


@pytest.mark.parametrize("body, expect", [
    ({"x": 0, "y": 0, "c": 0}, (0, 0, 0)),
    ({"x": 999, "y": 999, "c": 15}, (999, 999, 15)),
    ({"c": 3, "y": 2, "x": 1}, (1, 2, 3)),
])
def test_good_placements(body, expect):
    assert pixel.check_placement(body) == expect


@pytest.mark.parametrize("body", [
    None, [], "x", {}, {"x": 1, "y": 2}, {"x": 1000, "y": 0, "c": 0}, {"x": 0, "y": -1, "c": 0},
    {"x": 0, "y": 0, "c": 16}, {"x": 1.0, "y": 0, "c": 0}, {"x": True, "y": 0, "c": 0},
    {"x": "1", "y": 0, "c": 0}, {"x": 0, "y": 0, "c": 0, "user": "mallory"},
])
def test_bad_placements(body):
    with pytest.raises(pixel.Invalid):
        pixel.check_placement(body)


@pytest.mark.parametrize("setting, expect", [
    (None, 5), (0, 0), (30, 30), (0.5, 0.5), (-1, 5), ("10", 5), (True, 5), (float("nan"), 5), (10 ** 9, 5),
])
def test_cooldown_setting(setting, expect):
    assert pixel.cooldown_seconds(setting) == expect


def test_seconds_left_rounds_up_and_never_goes_negative():
    assert pixel.seconds_left(10_150, 10_000) == 0.2
    assert pixel.seconds_left(10_000, 10_000) == 0.0
    assert pixel.seconds_left(9_000, 10_000) == 0.0
    assert pixel.seconds_left(None, 10_000) == 0.0


def test_a_placement_is_one_u4_field_of_the_board():
    assert pixel.set_op(12, 3, 7) == {"op": "set", "type": "u4", "offset": "#3012", "value": 7}
    assert pixel.BOARD_BYTES == 500_000


# ---- the handlers against a fake node ----


class Node:
    """The node's side of the host calls the handlers make: the key-value
    store (with expiry), the board's blob and the channel."""

    def __init__(self):
        self.kv = {}
        self.board = None
        self.messages = []
        self.calls = []

    def host(self, op, args):
        self.calls.append(op)
        now = int(time.time() * 1000)
        entry = self.kv.get(args["key"])
        if entry is not None and entry["expires_at_ms"] is not None and entry["expires_at_ms"] <= now:
            entry = self.kv.pop(args["key"])
            entry = None
        if op == "kv_get":
            return {"entry": entry}
        if op == "kv_set":
            if args["nx"] and entry is not None:
                return {"entry": entry, "written": False}
            ttl = args["ttl_ms"]
            new = {"key": args["key"], "value": args["value"], "version": len(self.calls),
                   "expires_at_ms": None if ttl is None else now + ttl, "updated_at_ms": now}
            self.kv[args["key"]] = new
            return {"entry": new, "written": True}
        raise HostError("unknown_op", op)


class FakeContext(Context):
    """A context whose channel and blob calls go to ``Node`` (the real
    ones are host calls the node implements)."""

    __slots__ = ("node",)

    def __init__(self, node):
        super().__init__(host=node.host)
        self.node = node

    def publish(self, channel, data, blob=None, ops=None):
        self.node.calls.append("publish")
        if self.node.board is None:
            raise HostError("blob_not_found", "blob `%s` not found" % blob)
        assert channel == "board" and blob == pixel.BOARD_KEY
        for op in ops:
            i = int(op["offset"][1:])
            b = self.node.board[i // 2]
            self.node.board[i // 2] = (b & 0x0F) | (op["value"] << 4) if i % 2 == 0 else (b & 0xF0) | op["value"]
        self.node.messages.append(data)
        return {"epoch": "e1", "offset": len(self.node.messages), "results": [0]}

    def channel_position(self, channel):
        self.node.calls.append("channel_position")
        return {"epoch": "e1", "offset": len(self.node.messages)}

    def blob_create(self, key, size, if_absent=False):
        self.node.calls.append("blob_create")
        if self.node.board is None:
            self.node.board = bytearray(size)
        return {"key": key, "size": size}

    def blob(self, key):
        self.node.calls.append("blob")
        if self.node.board is None:
            raise HostError("blob_not_found", "blob `%s` not found" % key)
        data = bytes(self.node.board)

        class Blob:
            def read(self):
                return data
        return Blob()


@pytest.fixture
def node(monkeypatch):
    monkeypatch.setenv("PIXEL_BOARD_KEY", KEY)
    return Node()


def request(node, method, route, body=None, cookie=None):
    event = {"method": method, "path": route, "route": route, "params": {}, "query": {}, "headers": {},
             "cookies": {} if cookie is None else {"pixel_user": cookie}, "client": "127.0.0.1", "body": body}
    handler = board_fn.handler if route in ("/api/board", "/api/checksum") else api.handler
    return handler(event, FakeContext(node))


def status_and_json(answer):
    if isinstance(answer, dict):
        return 200, answer
    return answer.status, json.loads(answer.body)


def test_placing_needs_a_valid_cookie(node):
    assert status_and_json(request(node, "POST", "/api/pixel", {"x": 1, "y": 1, "c": 1}))[0] == 401
    forged = "alice." + pixel.sign("alice", "another key").split(".", 1)[1]
    assert status_and_json(request(node, "POST", "/api/pixel", {"x": 1, "y": 1, "c": 1}, forged))[0] == 401
    assert node.messages == []


def test_a_bad_placement_is_400_and_costs_no_cooldown(node):
    status, body = status_and_json(request(node, "POST", "/api/pixel", {"x": 1000, "y": 1, "c": 1},
                                           pixel.sign("alice", KEY)))
    assert status == 400 and "x must be" in body["error"]["message"]
    assert node.kv == {} and node.messages == []


def test_a_placement_is_one_publish_with_its_bitfield_op_and_then_a_cooldown(node):
    cookie = pixel.sign("alice", KEY)
    node.kv["pixel-board/cooldown_s"] = {"key": "pixel-board/cooldown_s", "value": 30, "version": 1,
                                         "expires_at_ms": None, "updated_at_ms": 0}
    status, body = status_and_json(request(node, "POST", "/api/pixel", {"x": 3, "y": 2, "c": 9}, cookie))
    assert status == 200, body
    assert body == {"x": 3, "y": 2, "c": 9, "epoch": "e1", "offset": 1, "cooldown_s": 30}
    # The board did not exist: made once, then the same publish again.
    assert node.calls.count("blob_create") == 1 and node.calls.count("publish") == 2
    assert node.messages == [{"x": 3, "y": 2, "c": 9}]
    assert node.board[1001] == 0x09  # pixel 2003: the low nibble of byte 1001
    assert node.kv["pixel-board/cooldown/alice"]["expires_at_ms"] > time.time() * 1000 + 29_000

    answer = request(node, "POST", "/api/pixel", {"x": 4, "y": 2, "c": 9}, cookie)
    status, body = status_and_json(answer)
    assert status == 429 and 29 < body["retry_after_s"] <= 30
    assert answer.headers["retry-after"] == "30"
    assert len(node.messages) == 1

    # Another user is not held back; a cooldown of 0 lets alice go again.
    assert status_and_json(request(node, "POST", "/api/pixel", {"x": 5, "y": 2, "c": 1},
                                   pixel.sign("bob", KEY)))[0] == 200
    node.kv["pixel-board/cooldown_s"]["value"] = 0
    assert status_and_json(request(node, "POST", "/api/pixel", {"x": 4, "y": 2, "c": 9}, cookie))[0] == 200
    assert len(node.messages) == 3


def test_login_sets_the_signed_cookie_and_me_reads_it(node):
    answer = request(node, "POST", "/api/login", {"name": "alice"})
    assert answer.status == 200 and json.loads(answer.body) == {"name": "alice"}
    (line,) = answer.cookies
    value = line.split(";", 1)[0].split("=", 1)[1]
    assert pixel.verify(value, KEY) == "alice"
    me = request(node, "GET", "/api/me", cookie=value)
    assert me == {"name": "alice", "cooldown_s": 5, "wait_s": 0.0}
    assert request(node, "GET", "/api/me")["name"] is None
    assert request(node, "POST", "/api/login", {"name": "a b"}).status == 400


def test_the_board_is_read_after_the_position_and_checksummed_like_the_page(node):
    node.board = bytearray(pixel.BOARD_BYTES)
    node.board[0] = 0x5A
    node.messages = [{"x": 0, "y": 0, "c": 5}] * 7
    answer = request(node, "GET", "/api/board")
    assert answer.content_type == "application/octet-stream"
    assert answer.headers["x-board-offset"] == "e1:7"
    assert answer.body == bytes(node.board)
    assert node.calls.index("channel_position") < node.calls.index("blob")
    checksum = request(node, "GET", "/api/checksum")
    assert checksum["crc32"] == "%08x" % zlib.crc32(bytes(node.board))
    assert checksum["offset"] == 7


def test_the_board_is_made_on_first_read(node):
    answer = request(node, "GET", "/api/board")
    assert len(answer.body) == pixel.BOARD_BYTES and set(answer.body) == {0}
    assert answer.headers["x-board-offset"] == "e1:0"
