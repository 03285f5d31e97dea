"""Users per country, with `map_batch`.

`map_batch(docs)` receives a list of documents and returns a list of values,
one per document (None leaves a document out). Use it when per-call work
can be shared by many documents (vectorised code, one lookup table, ...);
here it simply counts. `reduce` merges two partial counts.
"""


def map_batch(users):
    return [{u["country"]: 1} if "country" in u else None for u in users]


def reduce(a, b):
    merged = dict(a)
    for country, n in b.items():
        merged[country] = merged.get(country, 0) + n
    return merged


def handler(event, ctx):
    return map_batch([event])[0]
