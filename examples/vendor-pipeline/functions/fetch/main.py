from vendor_http import vendor_get


def handler(event, ctx):
    vendor, warrior, group = event["vendor"], event["warrior"], event["group"]
    data = vendor_get(vendor, "/warriors/%s/groups/%s/data" % (warrior, group))
    # The id is the item: a message delivered twice writes the same document.
    ctx.put("vp-data", "%s/%s" % (warrior, group), data)
    return "stored"
