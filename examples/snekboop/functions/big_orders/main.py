"""Orders worth at least 30.00: map without reduce.

Without `reduce`, the query answers every mapped value (in document order);
returning None leaves a document out, so this is a filter.
"""

THRESHOLD_CENTS = 3000


def map(order):
    total = order.get("price_cents", 0) * order.get("qty", 1)
    if total >= THRESHOLD_CENTS:
        return {"id": order["id"], "total_cents": total}
    return None


def handler(event, ctx):
    return map(event)
