def handler(event, ctx):
    # {"trigger": "docs", "category": "tour_photos", "changes": [{"op", "id", "doc"?}, ...]}
    for change in event["changes"]:
        print(change["op"], change["id"])
    return len(event["changes"])
