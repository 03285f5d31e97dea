"""Statistics of the users' ages: a reduce over small objects.

Any associative combination works as `reduce`: here count, sum, min and max
at once, from which the caller computes the mean.
"""


def map(user):
    age = user.get("age")
    if not isinstance(age, int):
        return None
    return {"count": 1, "sum": age, "min": age, "max": age}


def reduce(a, b):
    return {
        "count": a["count"] + b["count"],
        "sum": a["sum"] + b["sum"],
        "min": min(a["min"], b["min"]),
        "max": max(a["max"], b["max"]),
    }


def handler(event, ctx):
    return map(event)
