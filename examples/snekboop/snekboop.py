#!/usr/bin/env python3
"""Snekboop on Shoal: write JSON into sharded categories, query them with
registered functions that run next to the data.

    snekboop.py deploy                       register every function in functions/
    snekboop.py add_function DIR             register one function (a Shoal deploy)
    snekboop.py write CATEGORY FILE          FILE: a JSON array, or one document per line; - for stdin
    snekboop.py query CATEGORY FUNCTION      reduced value, or one mapped value per line
    snekboop.py categories                   categories, their shards and slots
    snekboop.py demo                         write sample data, register, query, print

The node is --url (env SHOAL_URL, default http://127.0.0.1:7700) with the
token --token (env SHOAL_TOKEN, else ./.shoal/admin.token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Iterator, List

HERE = os.path.dirname(os.path.abspath(__file__))
FUNCTIONS = os.path.join(HERE, "functions")

try:
    import shoal
except ImportError:  # run from a clone without `pip install ./python`
    sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
    import shoal

from shoal import Client, QueryError, ShoalError

# ---------------------------------------------------------------- the demo data
# Deterministic formulas, so anyone (the tests do) can compute the expected
# answers independently.

ORDERS = 240
USERS = 30
COUNTRIES = ["DK", "FI", "IS", "NO", "SE"]
ORDER_SHARDS = 8
USER_SHARDS = 2
BIG_ORDER_CENTS = 3000  # examples/snekboop/functions/big_orders/main.py


def demo_orders() -> Iterator[Dict[str, Any]]:
    """A generator: the client streams it to the node in batches."""
    for i in range(ORDERS):
        yield {
            "id": f"order-{i:04d}",
            "sku": f"sku-{i % 12:02d}",
            "user": f"user-{i % USERS:02d}",
            "price_cents": 199 + (i * 37) % 1000,
            "qty": 1 + (i * 7) % 5,
        }


def demo_users() -> List[Dict[str, Any]]:
    return [
        {
            "id": f"user-{j:02d}",
            "name": f"User {j}",
            "age": 18 + (j * 13) % 50,
            "country": COUNTRIES[(j * j) % 5],
        }
        for j in range(USERS)
    ]


def cents(n: int) -> str:
    return f"{n // 100}.{n % 100:02d}"


# ---------------------------------------------------------------- commands


def ensure_category(client: Client, name: str, shards: int) -> None:
    try:
        client.create_category(name, shards=shards)
    except ShoalError as e:
        if e.code != "category_exists":
            raise


def function_dirs() -> List[str]:
    return sorted(
        os.path.join(FUNCTIONS, d) for d in os.listdir(FUNCTIONS) if os.path.isfile(os.path.join(FUNCTIONS, d, "shoal.toml"))
    )


def cmd_deploy(client: Client, args: argparse.Namespace) -> None:
    """The seed's `deploy` set up the whole AWS stack. On Shoal the stack is
    one running node; what is left is registering the functions."""
    health = client.health()
    print(f"node {client.url} is {health.get('status')} (shoal {health.get('version')})")
    for d in function_dirs():
        print(registered(client.deploy(d)))


def cmd_add_function(client: Client, args: argparse.Namespace) -> None:
    print(registered(client.deploy(args.dir)))


def registered(view: dict) -> str:
    # Deploying the code a function already runs changes nothing.
    if view.get("unchanged"):
        return f"{view['name']} unchanged, still version {view['version']}"
    return f"registered {view['name']} version {view['version']}"


def read_docs(path: str) -> Iterator[Any]:
    """A JSON array (read whole) or NDJSON (streamed, one document per line)."""
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    try:
        first = ""
        while True:
            ch = f.read(1)
            if not ch or not ch.isspace():
                first = ch
                break
        if first == "[":
            yield from json.loads(first + f.read())
            return
        line_no = 1
        pending = first
        for line in f:
            line = pending + line
            pending = ""
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise SystemExit(f"snekboop: {path}: line {line_no} is not JSON: {e}")
            line_no += 1
        if pending.strip():
            yield json.loads(pending)
    finally:
        if f is not sys.stdin:
            f.close()


def cmd_write(client: Client, args: argparse.Namespace) -> None:
    ids = client.write(args.category, read_docs(args.file), batch_size=args.batch_size)
    cat = client.category(args.category)
    print(f"wrote {len(ids)} documents to {args.category} ({cat['docs']} documents in {cat['shards']} shards)")


def cmd_query(client: Client, args: argparse.Namespace) -> None:
    progress = None
    if args.progress:

        def progress(p: Dict[str, Any]) -> None:
            print(f"  {p['docs_done']}/{p['docs_total']} documents", file=sys.stderr)

    with client.query_iter(args.category, args.function, skip_errors=args.skip_errors, on_progress=progress) as stream:
        for value in stream:  # map-only functions: one value per line, streamed
            print(json.dumps(value, sort_keys=True))
        stats = stream.stats or {}
    if stats.get("reduced"):
        print(json.dumps(stats.get("result"), sort_keys=True))
    if args.stats:
        print(
            f"{stats.get('docs')} documents, {stats.get('shards')} shards "
            f"({stats.get('cached_shards')} cached), {stats.get('errors')} errors, "
            f"{stats.get('duration_ms', 0):.1f} ms",
            file=sys.stderr,
        )
        for failure in stats.get("failures", []):
            err = failure["error"]
            print(f"  {failure['id']}: {err.get('exception') or err.get('type')}: {err.get('message')}", file=sys.stderr)


def cmd_categories(client: Client, args: argparse.Namespace) -> None:
    for cat in client.categories():
        slots = [s["slot"] for s in cat["shard_stats"]]
        print(f"{cat['name']}: {cat['docs']} documents, {cat['bytes']} bytes, {cat['shards']} shards on slots {slots}")


def cmd_demo(client: Client, args: argparse.Namespace) -> None:
    print(f"snekboop demo on {client.url}")
    # write(category, json): categories are sharded; the shard level is chosen
    # when a category is created (a first write creates one with the default).
    ensure_category(client, "orders", ORDER_SHARDS)
    ensure_category(client, "users", USER_SHARDS)
    n_orders = len(client.write("orders", demo_orders(), batch_size=100))
    n_users = len(client.write("users", demo_users()))
    for name, n in (("orders", n_orders), ("users", n_users)):
        cat = client.category(name)
        slots = [s["slot"] for s in cat["shard_stats"]]
        print(f"wrote {n} {name}: {cat['docs']} documents in {cat['shards']} shards on slots {slots}")

    # add_function: register the functions queries use.
    names = [client.deploy(d)["name"] for d in function_dirs()]
    print(f"registered {', '.join(names)}")

    # query(category, function): map next to the data, shards in parallel, reduce.
    total, stats = client.query("orders", "revenue", with_stats=True)
    print(f"revenue: {total} cents = {cents(total)} over {stats['docs']} orders in {stats['shards']} shards")

    big = sorted(client.query("orders", "big_orders"), key=lambda v: v["id"])
    print(f"big orders (>= {cents(BIG_ORDER_CENTS)}): {len(big)}, worth {cents(sum(v['total_cents'] for v in big))}")
    print(f"  first: {', '.join(v['id'] for v in big[:5])}")

    counts = client.query("users", "country_counts")
    print(f"users by country: {json.dumps(counts, sort_keys=True)}")

    ages = client.query("users", "age_stats")
    print(f"ages: count {ages['count']}, sum {ages['sum']}, min {ages['min']}, max {ages['max']}")

    # A function that cannot handle some documents: users have no price, so
    # revenue gives no value for them; age_stats over orders gives none at all.
    nothing = client.query("orders", "age_stats")
    print(f"age_stats over orders: {json.dumps(nothing)}")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="snekboop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the Shoal node (env SHOAL_URL, default http://127.0.0.1:7700)")
    parser.add_argument("--token", help="bearer token (env SHOAL_TOKEN, else ./.shoal/admin.token)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("deploy", help="register every function in functions/").set_defaults(run=cmd_deploy)

    p = sub.add_parser("add_function", help="register one function directory")
    p.add_argument("dir")
    p.set_defaults(run=cmd_add_function)

    p = sub.add_parser("write", help="write JSON documents to a category")
    p.add_argument("category")
    p.add_argument("file", help="a JSON array or one JSON document per line; - reads stdin")
    p.add_argument("--batch-size", type=int, default=10000, help="documents per atomic batch")
    p.set_defaults(run=cmd_write)

    p = sub.add_parser("query", help="map (and reduce) a function over a category")
    p.add_argument("category")
    p.add_argument("function")
    p.add_argument("--skip-errors", action="store_true", help="count failing documents instead of failing")
    p.add_argument("--stats", action="store_true", help="print the query's statistics to stderr")
    p.add_argument("--progress", action="store_true", help="print progress to stderr")
    p.set_defaults(run=cmd_query)

    sub.add_parser("categories", help="list categories").set_defaults(run=cmd_categories)
    sub.add_parser("demo", help="write sample data, register the functions, query").set_defaults(run=cmd_demo)

    args = parser.parse_args(argv)
    try:
        client = Client(args.url, args.token)
        args.run(client, args)
    except QueryError as e:
        print(f"snekboop: {e}", file=sys.stderr)
        if e.traceback:
            print(e.traceback, file=sys.stderr)
        return 1
    except (ShoalError, OSError, ValueError) as e:
        print(f"snekboop: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
