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
"""

__version__ = "0.1.0"

from .archive import pack_dir  # noqa: E402
from .client import Client  # noqa: E402
from .errors import FunctionError, QueryError, ShoalError  # noqa: E402
from .query import QueryStream  # noqa: E402

__all__ = ["Client", "ShoalError", "FunctionError", "QueryError", "QueryStream", "pack_dir", "__version__"]
