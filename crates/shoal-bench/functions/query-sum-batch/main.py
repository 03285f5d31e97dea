"""Total order value, as a batch function: one value per document."""


def map_batch(docs):
    return [d["price"] * d["qty"] for d in docs]


def reduce(a, b):
    return a + b
