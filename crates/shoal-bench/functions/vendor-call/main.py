"""Calls the URL in the message once (GET, standard library only).

An HTTP error (a 429 from the vendor) is returned, not raised: a retry would
send the vendor more requests than messages, and the vendor's own counts are
what the figure reads.
"""

import urllib.error
import urllib.request


def handler(event, ctx):
    try:
        with urllib.request.urlopen(event["url"], timeout=10) as r:
            r.read()
            return {"status": r.status}
    except urllib.error.HTTPError as e:
        return {"status": e.code}
