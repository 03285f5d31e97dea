"""Total order value: the trivial map/reduce of the query benchmarks."""


def map(doc):
    return doc["price"] * doc["qty"]


def reduce(a, b):
    return a + b
