def handler(event, ctx):
    # event: {"job": <id>, "count": <children>}; results come in child order.
    results = list(ctx.results(event["job"]))
    failed = [r["index"] for r in results if r["status"] != "succeeded"]
    return {
        "children": event["count"],
        "total": sum(r["output"] for r in results if r["status"] == "succeeded"),
        "failed": failed,
    }
