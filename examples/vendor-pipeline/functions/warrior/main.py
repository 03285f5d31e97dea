from vendor_http import vendor_get


def handler(event, ctx):
    vendor, warrior = event["vendor"], event["warrior"]
    groups = vendor_get(vendor, "/warriors/%s/groups" % warrior)
    for g in groups:
        item = "%s/%s" % (warrior, g)
        ctx.send("vp-items", {"vendor": vendor, "warrior": warrior, "group": g}, dedup_id=item)
    return {"groups": len(groups)}
