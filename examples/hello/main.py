"""The smallest Shoal function: greets whoever the event names."""


def handler(event, ctx):
    print(f"hello from invocation {ctx.invocation_id}")
    return {"hello": event.get("name", "world")}
