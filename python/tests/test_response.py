"""`shoal.Response`: a handler's binary result, its checks and JSON form."""

import importlib
import sys
import types

import pytest

from shoal import Context, Response, cookie
from shoal.response import is_response_json


def test_bytes_and_text_bodies():
    r = Response(b"\x89PNG\x00", content_type="image/png", status=201, headers={"X-Tile": "3"})
    assert (r.body, r.content_type, r.status, r.headers) == (b"\x89PNG\x00", "image/png", 201, {"x-tile": "3"})
    assert Response(bytearray(b"ab")).body == b"ab"
    assert Response(b"ab").content_type == "application/octet-stream"
    assert Response("hé").content_type == "text/plain; charset=utf-8"
    assert Response("hé").body == "hé".encode("utf-8")
    assert Response("<p/>", content_type="text/html").content_type == "text/html; charset=utf-8"
    assert Response("<a/>", content_type="image/svg+xml").content_type == "image/svg+xml; charset=utf-8"
    assert Response("x", content_type="text/csv; charset=latin-1").content_type == "text/csv; charset=latin-1"
    # Not a text type: left as it is.
    assert Response("{}", content_type="application/json").content_type == "application/json"
    assert Response("hé").text == "hé"
    # The context hands out the same class.
    assert Context.Response is Response


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"status": 199}, "between 200 and 599"),
        ({"status": 600}, "between 200 and 599"),
        ({"status": 204}, "cannot have a body"),
        ({"status": True}, "must be an int"),
        ({"content_type": ""}, "empty"),
        ({"content_type": "a/b\r\nx: y"}, "visible ASCII"),
        ({"content_type": 3}, "must be a str"),
        ({"headers": {"Connection": "close"}}, "'connection'"),
        ({"headers": {"content-length": "1"}}, "'content-length'"),
        ({"headers": {"Content-Type": "a/b"}}, "content_type="),
        ({"headers": {"shoal-invocation-id": "x"}}, "shoal-*"),
        ({"headers": {"bad name": "x"}}, "not a valid HTTP header name"),
        ({"headers": {"x-a": "é"}}, "visible ASCII"),
        ({"headers": {"x-a": 1}}, "must be a str"),
        ({"headers": {"X-A": "1", "x-a": "2"}}, "given twice"),
        ({"headers": {"x-%d" % i: "1" for i in range(65)}}, "at most 64"),
    ],
)
def test_bad_arguments_are_refused_where_made(kwargs, error):
    with pytest.raises((ValueError, TypeError)) as e:
        Response(b"x", **kwargs)
    assert error in str(e.value)


def test_bodies_must_be_bytes_or_str():
    with pytest.raises(TypeError):
        Response({"a": 1})
    assert Response(b"", status=204).status == 204


def test_json_form_round_trips():
    r = Response(bytes(range(256)), content_type="image/png", headers={"x-a": "1"})
    form = r.to_json()
    assert form == {
        "$response": {
            "status": 200,
            "content_type": "image/png",
            "headers": {"x-a": "1"},
            "body_base64": form["$response"]["body_base64"],
        }
    }
    assert is_response_json(form)
    assert Response.from_json(form) == r
    assert not is_response_json({"$response": 1, "b": 2})
    with pytest.raises(ValueError):
        Response.from_json({"a": 1})
    with pytest.raises(ValueError):
        Response.from_json({"$response": {"status": 200}})


def test_cookies_are_set_cookie_values():
    assert cookie("sid", "abc") == "sid=abc; Path=/; HttpOnly; SameSite=Lax"
    assert (
        cookie("sid", "a.b-c_1", max_age=0, path="/app", http_only=False, secure=True, same_site="None")
        == "sid=a.b-c_1; Max-Age=0; Path=/app; Secure; SameSite=None"
    )
    assert cookie("t", "", path=None, http_only=False, same_site=None) == "t="
    assert Context.cookie("a", "b") == cookie("a", "b")
    r = Response("hi", cookies=[cookie("sid", "1"), "theme=dark"])
    assert r.cookies == ["sid=1; Path=/; HttpOnly; SameSite=Lax", "theme=dark"]
    form = r.to_json()
    assert form["$response"]["cookies"] == r.cookies
    assert Response.from_json(form) == r
    # Without cookies the JSON form is as before.
    assert "cookies" not in Response("hi").to_json()["$response"]
    assert Response("hi") != r


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: cookie("a b", "x"), "not a cookie name"),
        (lambda: cookie("a", "x;y"), "may not hold ';'"),
        (lambda: cookie("a", "é"), "may not hold"),
        (lambda: cookie("a", 3), "must be a str"),
        (lambda: cookie("a", "b", max_age=-1), "max_age"),
        (lambda: cookie("a", "b", same_site="Loose"), "same_site"),
        (lambda: cookie("a", "b", same_site="None"), "secure=True"),
        (lambda: Response("", cookies="a=b"), "a list"),
        (lambda: Response("", cookies=["nope"]), "not a Set-Cookie value"),
        (lambda: Response("", cookies=["a=b\r\nx: y"]), "visible ASCII"),
        (lambda: Response("", cookies=["c%d=1" % i for i in range(65)]), "at most 64 cookies"),
    ],
)
def test_bad_cookies_are_refused_where_made(make, error):
    with pytest.raises((ValueError, TypeError), match=error):
        make()


def test_inside_a_worker_the_runtimes_class_is_handed_out():
    runtime = types.ModuleType("_shoal_runner.response")

    class RuntimeResponse:
        pass

    runtime.Response = RuntimeResponse
    runtime.is_response_json = is_response_json
    module = importlib.import_module("shoal.response")
    original = module.Response, module.is_response_json
    saved = sys.modules.pop("_shoal_runner.response", None)
    sys.modules["_shoal_runner.response"] = runtime
    try:
        importlib.reload(module)
        assert module.Response is RuntimeResponse
    finally:
        del sys.modules["_shoal_runner.response"]
        if saved is not None:
            sys.modules["_shoal_runner.response"] = saved
        # The classes other modules already hold stay the ones in use.
        module.Response, module.is_response_json = original
    assert module.Response is Response
