#!/usr/bin/env python3
"""A mock of the seed's vendor API: troops -> warriors -> data groups -> data.

It is strict the way the real one was: more than `--limit` requests in any
one-second window are answered 429, a few percent of calls fail at random
with 503 (transient), and a few data items always fail with 500 (permanent).
Everything is deterministic from `--seed` except the random 503s.

    python3 vendor.py [--port 0] [--limit 20] [--troops 3] [--warriors 4]
                      [--groups 5] [--fail-rate 0.03] [--fail-every 0]
                      [--broken-every 40]

It prints `listening on http://127.0.0.1:PORT` once it serves. Routes:

    GET /troops                               ["troop-0", ...]
    GET /troops/{troop}/warriors              ["troop-0.warrior-0", ...]
    GET /warriors/{warrior}/groups            ["group-0", ...]
    GET /warriors/{warrior}/groups/{g}/data   {"warrior", "group", "values"}
    GET /_stats                               counts, peak per 1-second window
    GET /_items                               every data item's path
    GET /_broken                              the items that always fail

Standard library only.
"""

import argparse
import bisect
import json
import random
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Vendor:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        # Times of the requests that were served (not 429): the limit applies
        # to them, as a real API counts what it accepts.
        self.accepted = []
        self.all_times = []
        self.counts = {"requests": 0, "ok": 0, "too_many": 0, "transient": 0, "permanent": 0}
        self.fetched = {}
        self.rng = random.Random()

    def troops(self):
        return ["troop-%d" % t for t in range(self.args.troops)]

    def warriors(self, troop):
        return ["%s.warrior-%d" % (troop, w) for w in range(self.args.warriors)]

    def groups(self, warrior):
        # Each warrior has its own number of groups: the fan-out is dynamic.
        n = 1 + zlib.crc32(warrior.encode()) % self.args.groups
        return ["group-%d" % g for g in range(n)]

    def items(self):
        return [
            "%s/%s" % (w, g)
            for t in self.troops()
            for w in self.warriors(t)
            for g in self.groups(w)
        ]

    def transient(self):
        """True for the requests that fail with 503: at random
        (`--fail-rate`) and every `--fail-every`-th one."""
        with self.lock:
            n = self.counts["requests"]
        every = self.args.fail_every
        return self.rng.random() < self.args.fail_rate or (every > 0 and n % every == 0)

    def broken(self, item):
        every = self.args.broken_every
        return every > 0 and zlib.crc32(item.encode()) % every == 0

    def admit(self, now):
        """True when the request is within the limit (and counts it)."""
        with self.lock:
            self.counts["requests"] += 1
            self.all_times.append(now)
            window = now - 1.0
            i = bisect.bisect_right(self.accepted, window)
            if len(self.accepted) - i >= self.args.limit:
                self.counts["too_many"] += 1
                return False
            self.accepted.append(now)
            return True

    def peak(self, times):
        """Most requests in any one-second window."""
        best = 0
        j = 0
        for i, t in enumerate(times):
            while times[j] <= t - 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best

    def stats(self):
        with self.lock:
            accepted = list(self.accepted)
            times = list(self.all_times)
            out = dict(self.counts)
            out["fetched"] = dict(self.fetched)
        out["peak_1s"] = self.peak(times)
        out["peak_accepted_1s"] = self.peak(accepted)
        out["limit"] = self.args.limit
        if len(accepted) > 1:
            span = accepted[-1] - accepted[0]
            out["mean_rate"] = (len(accepted) - 1) / span if span > 0 else None
        else:
            out["mean_rate"] = None
        return out


def handler_for(vendor):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = self.path.split("?")[0].strip("/").split("/")
            if path == ["_stats"]:
                return self.reply(200, vendor.stats())
            if path == ["_items"]:
                return self.reply(200, vendor.items())
            if path == ["_broken"]:
                return self.reply(200, sorted(i for i in vendor.items() if vendor.broken(i)))
            if not vendor.admit(time.monotonic()):
                return self.reply(429, {"error": "too many requests"})
            if vendor.transient():
                with vendor.lock:
                    vendor.counts["transient"] += 1
                return self.reply(503, {"error": "try again"})
            if path == ["troops"]:
                body = vendor.troops()
            elif len(path) == 3 and path[0] == "troops" and path[2] == "warriors":
                body = vendor.warriors(path[1])
            elif len(path) == 3 and path[0] == "warriors" and path[2] == "groups":
                body = vendor.groups(path[1])
            elif len(path) == 5 and path[0] == "warriors" and path[2] == "groups" and path[4] == "data":
                item = "%s/%s" % (path[1], path[3])
                if vendor.broken(item):
                    with vendor.lock:
                        vendor.counts["permanent"] += 1
                    return self.reply(500, {"error": "this item is broken on our side"})
                with vendor.lock:
                    vendor.fetched[item] = vendor.fetched.get(item, 0) + 1
                seed = zlib.crc32(item.encode())
                body = {"warrior": path[1], "group": path[3], "values": [(seed >> s) % 100 for s in range(0, 24, 3)]}
            else:
                return self.reply(404, {"error": "no such route"})
            with vendor.lock:
                vendor.counts["ok"] += 1
            self.reply(200, body)

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--limit", type=int, default=20, help="requests per second it accepts")
    p.add_argument("--troops", type=int, default=3)
    p.add_argument("--warriors", type=int, default=4, help="warriors per troop")
    p.add_argument("--groups", type=int, default=5, help="most data groups per warrior")
    p.add_argument("--fail-rate", type=float, default=0.03, help="share of calls that fail with 503")
    p.add_argument("--fail-every", type=int, default=0, help="also fail every N-th call with 503 (0: never)")
    p.add_argument("--broken-every", type=int, default=40, help="about 1 in N data items always fails (0: none)")
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(Vendor(args)))
    server.daemon_threads = True
    print("listening on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
