from vendor_http import vendor_get


def handler(event, ctx):
    vendor = event["vendor"]
    troops = vendor_get(vendor, "/troops")
    job = ctx.map("vp-troop", [{"vendor": vendor, "troop": t} for t in troops], then="vp-report")
    return {"job": job, "troops": len(troops)}
