"""The trivial queue consumer: acknowledges its message(s) by returning."""


def handler(event, ctx):
    return None
