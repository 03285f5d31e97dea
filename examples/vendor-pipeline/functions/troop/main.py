from vendor_http import vendor_get


def handler(event, ctx):
    vendor, troop = event["vendor"], event["troop"]
    warriors = vendor_get(vendor, "/troops/%s/warriors" % troop)
    ctx.map("vp-warrior", [{"vendor": vendor, "warrior": w} for w in warriors])
    return {"warriors": len(warriors)}
