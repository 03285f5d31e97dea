"""Python client for Shoal, a self-hosted serverless platform.

>>> from shoal import Client
>>> shoal = Client()                      # SHOAL_URL / SHOAL_TOKEN, or ./.shoal
>>> shoal.deploy("examples/hello")["version"]
>>> shoal.invoke("hello", {"name": "Ada"})
{'hello': 'Ada'}
>>> shoal.write("orders", [{"id": "o1", "price": 3, "qty": 2}])
['o1']
>>> shoal.query("orders", "revenue")     # map/reduce next to the data
6

Functions use ``Context`` and ``HostError`` (the handler's ``ctx`` and the
error of its host calls) for type hints and tests, and return a
``Response`` for a result that is bytes (an image, a file)::

    from shoal import Context, HostError, Response

Importing those does not import the HTTP client: the client's modules load
on first use of ``Client`` and the other names below.
"""

__version__ = "0.1.0"

from .context import Context, HostError  # noqa: E402
from .response import Response, cookie  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .archive import pack_dir
    from .client import Client
    from .errors import FunctionError, QueryError, ShoalError
    from .query import QueryStream

__all__ = [
    "Client",
    "ShoalError",
    "FunctionError",
    "QueryError",
    "QueryStream",
    "pack_dir",
    "Context",
    "HostError",
    "Response",
    "cookie",
    "__version__",
]

# Name -> module of the client's names, imported when first used.
_LAZY = {
    "Client": "client",
    "ShoalError": "errors",
    "FunctionError": "errors",
    "QueryError": "errors",
    "QueryStream": "query",
    "pack_dir": "archive",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'shoal' has no attribute %r" % (name,))
    import importlib

    value = getattr(importlib.import_module("." + module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
