def handler(event, ctx):
    if not isinstance(event, (int, float)):
        raise TypeError("square needs a number, not %r" % (event,))
    return event * event
