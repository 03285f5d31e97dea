"""The trivial function of the benchmark: returns its event."""


def handler(event, ctx):
    return event
