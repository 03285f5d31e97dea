"""A CPU-heavy map: a pure-Python arithmetic loop per document (about 1 ms
on the bench machine), reduced by an integer sum, so that every system must
find exactly the same result."""

ROUNDS = 12_000


def map(doc):
    x = doc["qty"] + 1
    acc = 0
    for i in range(ROUNDS):
        acc = (acc * 31 + i * x) % 1_000_003
    return acc


def reduce(a, b):
    return a + b
