"""Calls to the vendor's API, shared by every function of the pipeline
(`pipeline.py` deploys this file beside each function's main.py)."""

import json
import urllib.error
import urllib.request


class VendorError(RuntimeError):
    """The vendor answered with an error status; the node retries the call."""


def vendor_get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise VendorError("vendor answered %d for %s" % (e.code, path)) from None
