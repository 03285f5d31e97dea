"""A fan-out child: returns its event."""


def handler(event, ctx):
    return event
