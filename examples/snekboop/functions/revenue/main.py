"""Revenue of orders, in cents: the sum of price_cents × qty.

`map` runs once per document next to the data (each shard in parallel);
`reduce` combines two partial results and must be associative, as Shoal
reduces inside each worker first and then across shards.
"""


def map(order):
    # Documents without a price (other kinds of documents) give no value.
    if "price_cents" not in order:
        return None
    return order["price_cents"] * order.get("qty", 1)


def reduce(a, b):
    return a + b


def handler(event, ctx):
    """`shoal invoke revenue '{"price_cents": 250, "qty": 2}'` tries map on one document."""
    return map(event)
