"""The runner's `Response` against the golden JSON forms
(`crates/shoal-runtime/tests/golden/response/`, see its README): each
case's `Response(...)` must encode, as the worker encodes results, to the
golden text byte for byte. The Rust side decodes the same texts (crate
shoal-runtime, tests/response_golden.rs)."""

import json
import os

import pytest

from conftest import REPO
from _shoal_runner import protocol
from _shoal_runner.response import Response

GOLDEN = os.path.join(REPO, "crates", "shoal-runtime", "tests", "golden", "response", "responses.json")


def _cases():
    with open(GOLDEN, encoding="utf-8") as f:
        for case in json.load(f)["cases"]:
            yield pytest.param(case, id=case["name"])


@pytest.mark.parametrize("case", list(_cases()))
def test_responses_encode_to_the_golden_text(case):
    args = dict(case["args"])
    body = bytes.fromhex(args.pop("body_hex")) if "body_hex" in args else args.pop("body_text")
    response = Response(body, **args)
    assert protocol.encoder()(response.to_json()) == case["result"]
    assert Response.from_json(json.loads(case["result"])) == response
