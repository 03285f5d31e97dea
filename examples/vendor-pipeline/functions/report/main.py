def handler(event, ctx):
    results = list(ctx.results(event["job"]))
    failed = [r["index"] for r in results if r["status"] != "succeeded"]
    return {"troops": event["count"], "failed_troops": failed}
