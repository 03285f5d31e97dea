"""Tests of the Python client against a real node.

Run by crates/shoal/tests/python_client.rs, which starts a node and passes
SHOAL_URL and SHOAL_TOKEN; by hand:

    SHOAL_URL=http://127.0.0.1:7700 SHOAL_TOKEN=$(cat .shoal/admin.token) \
        PYTHONPATH=python python3 python/tests/test_client.py -v
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shoal import Client, FunctionError, QueryError, QueryStream, ShoalError, pack_dir  # noqa: E402

URL = os.environ.get("SHOAL_URL", "")
TOKEN = os.environ.get("SHOAL_TOKEN", "")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class FunctionDirs:
    """Function directories written to a temp dir."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="shoal-py-test-")

    def make(self, name: str, main_py: str, extra_toml: str = "", files: dict = None) -> str:
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "shoal.toml"), "w") as f:
            f.write(f'name = "{name}"\nhandler = "main:handler"\n{extra_toml}')
        with open(os.path.join(d, "main.py"), "w") as f:
            f.write(textwrap.dedent(main_py))
        for rel, text in (files or {}).items():
            path = os.path.join(d, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        return d

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


DIRS = FunctionDirs()

ECHO = """
def handler(event, ctx):
    print("echo", ctx.invocation_id)
    return {"event": event, "function": ctx.function_name}
"""

BOOM = """
def handler(event, ctx):
    raise ValueError("boom: " + str(event.get("why")))
"""

SUM_PRICE = """
def map(doc):
    if "price" not in doc:
        return None
    return doc["price"] * doc.get("qty", 1)

def reduce(a, b):
    return a + b

def handler(event, ctx):
    return map(event)
"""

ONLY_MAP = """
def map(doc):
    if doc.get("skip"):
        return None
    return {"n": doc["n"], "double": doc["n"] * 2}

def handler(event, ctx):
    return map(event)
"""

FRAGILE = """
def map(doc):
    if doc.get("bad"):
        raise KeyError("no good: " + str(doc.get("n")))
    return doc["n"]

def reduce(a, b):
    return a + b

def handler(event, ctx):
    return map(event)
"""

NOT_A_QUERY = """
def handler(event, ctx):
    return 1
"""


class ClientTest(unittest.TestCase):
    client: Client

    @classmethod
    def setUpClass(cls) -> None:
        if not URL or not TOKEN:
            raise unittest.SkipTest("SHOAL_URL and SHOAL_TOKEN must name a running node")
        cls.client = Client(URL, TOKEN)
        for name, code in (
            ("py-echo", ECHO),
            ("py-boom", BOOM),
            ("py-sum", SUM_PRICE),
            ("py-only-map", ONLY_MAP),
            ("py-fragile", FRAGILE),
            ("py-not-query", NOT_A_QUERY),
        ):
            cls.client.deploy(DIRS.make(name, code))

    # ------------------------------------------------------------ node, auth

    def test_health(self) -> None:
        self.assertEqual(self.client.health()["status"], "ok")

    def test_nodes(self) -> None:
        nodes = self.client.nodes()
        self.assertEqual(len(nodes), 1)
        me = nodes[0]
        self.assertTrue(me["this"])
        self.assertEqual(me["state"], "alive")
        self.assertEqual("http://" + me["address"], URL)
        self.assertLessEqual(me["started_at_ms"], me["last_seen_ms"])

    def test_bad_token_is_unauthorized(self) -> None:
        with self.assertRaises(ShoalError) as cm:
            Client(URL, "not-a-token").functions()
        self.assertEqual(cm.exception.status, 401)
        self.assertEqual(cm.exception.code, "unauthorized")

    def test_token_defaults_to_env_then_token_file(self) -> None:
        old_cwd, old_env = os.getcwd(), os.environ.pop("SHOAL_TOKEN", None)
        tmp = tempfile.mkdtemp()
        try:
            os.chdir(tmp)
            with self.assertRaises(ShoalError) as cm:
                Client(URL).functions()  # no env, no file: no token
            self.assertEqual(cm.exception.code, "unauthorized")
            os.makedirs(".shoal")
            with open(os.path.join(".shoal", "admin.token"), "w") as f:
                f.write(TOKEN + "\n")
            self.assertIsInstance(Client(URL).functions(), list)
            os.environ["SHOAL_TOKEN"] = "wrong"
            with self.assertRaises(ShoalError):
                Client(URL).functions()  # the environment wins over the file
        finally:
            os.chdir(old_cwd)
            if old_env is None:
                os.environ.pop("SHOAL_TOKEN", None)
            else:
                os.environ["SHOAL_TOKEN"] = old_env
            shutil.rmtree(tmp, ignore_errors=True)

    def test_unreachable_node(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with self.assertRaises(ShoalError) as cm:
            Client(f"http://127.0.0.1:{port}", TOKEN).health()
        self.assertIsNone(cm.exception.status)
        self.assertEqual(cm.exception.code, "unreachable")
        self.assertIn("cannot reach the node", str(cm.exception))

    def test_connections_are_kept_alive(self) -> None:
        c = Client(URL, TOKEN)
        for _ in range(20):
            c.functions()
        self.assertEqual(c._http.idle_connections(), 1)
        c.close()
        self.assertEqual(c._http.idle_connections(), 0)
        c.health()  # reconnects after close

    def test_threads_share_a_client(self) -> None:
        errors = []

        def work(i: int) -> None:
            try:
                for j in range(10):
                    self.assertEqual(self.client.invoke("py-echo", {"i": i, "j": j})["event"], {"i": i, "j": j})
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    def test_tokens(self) -> None:
        made = self.client.create_token("reader", name="py-test")
        self.assertEqual(made["role"], "reader")
        reader = Client(URL, made["token"])
        self.assertIsInstance(reader.functions(), list)
        with self.assertRaises(ShoalError) as cm:
            reader.invoke("py-echo")
        self.assertEqual((cm.exception.status, cm.exception.code), (403, "forbidden"))
        self.assertIn(made["id"], [t["id"] for t in self.client.tokens()])
        self.client.revoke_token(made["id"])
        with self.assertRaises(ShoalError) as cm:
            reader.functions()
        self.assertEqual(cm.exception.code, "unauthorized")

    def test_users_and_scoped_tokens(self) -> None:
        name = f"py-user-{uuid.uuid4().hex[:8]}"
        made = self.client.create_user(name, "invoker")
        self.assertEqual((made["name"], made["role"]), (name, "invoker"))
        tok = self.client.create_token(
            "invoker", name="py-scoped", user=name, scopes=["function:py-echo"]
        )
        scoped = Client(URL, tok["token"])
        self.assertEqual([f["name"] for f in scoped.functions()], ["py-echo"])
        with self.assertRaises(ShoalError) as cm:
            scoped.tokens()
        self.assertEqual((cm.exception.status, cm.exception.code), (403, "forbidden"))
        with self.assertRaises(ShoalError) as cm:
            self.client.create_token("admin", user=name)
        self.assertEqual(cm.exception.code, "invalid_input")
        self.assertIn(name, [u["name"] for u in self.client.users()])
        self.assertEqual([t["id"] for t in self.client.user(name)["tokens"]], [tok["id"]])
        self.assertEqual(self.client.set_user_role(name, "reader")["role"], "reader")
        gone = self.client.delete_user(name)
        self.assertEqual(gone["revoked_tokens"], [tok["id"]])
        with self.assertRaises(ShoalError) as cm:
            scoped.functions()
        self.assertEqual(cm.exception.code, "unauthorized")

    # ------------------------------------------------------------ functions

    def test_pack_dir_is_deterministic_and_skips_junk(self) -> None:
        d = DIRS.make(
            "packed",
            ECHO,
            files={
                "lib/util.py": "X = 1\n",
                ".hidden": "secret",
                "__pycache__/main.cpython.pyc": "junk",
                "venv/bin/python": "junk",
                "lib/__pycache__/util.pyc": "junk",
            },
        )
        a = pack_dir(d)
        os.utime(os.path.join(d, "main.py"), (1, 1))
        self.assertEqual(pack_dir(d), a)
        names = tarfile.open(fileobj=io.BytesIO(a)).getnames()
        self.assertEqual(names, ["lib/util.py", "main.py", "shoal.toml"])
        with self.assertRaises(FileNotFoundError):
            pack_dir(os.path.join(d, "lib"))

    def test_deploy_functions_and_remove(self) -> None:
        name = unique("py-tmp")
        view = self.client.deploy(DIRS.make(name, ECHO, 'timeout = "5s"\n'))
        self.assertEqual((view["name"], view["version"], view["timeout_ms"]), (name, 1, 5000))
        self.assertEqual(self.client.deploy(DIRS.make(name, ECHO))["version"], 2)
        self.assertIn(name, [f["name"] for f in self.client.functions()])
        self.assertEqual(self.client.function(name)["version"], 2)
        self.client.remove_function(name)
        self.assertNotIn(name, [f["name"] for f in self.client.functions()])
        with self.assertRaises(ShoalError) as cm:
            self.client.remove_function(name)
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "function_not_found"))

    def test_versions_rollback_aliases_and_dry_run(self) -> None:
        name = unique("py-versions")
        # One directory per name: each make rewrites it.
        def code(n: int) -> str:
            return DIRS.make(name, f"def handler(event, ctx):\n    return {n}\n")

        self.assertEqual(self.client.deploy(code(1))["version"], 1)
        self.assertEqual(self.client.deploy(code(2))["version"], 2)
        self.assertTrue(self.client.deploy(code(2)).get("unchanged"))
        checked = self.client.deploy(code(3), dry_run=True)
        self.assertTrue(checked.get("dry_run"))
        self.assertEqual(self.client.invoke(name), 2)

        alias = self.client.set_alias(name, "stable", 1)
        self.assertEqual((alias["alias"], alias["version"]), ("stable", 1))
        self.assertEqual(self.client.invoke(f"{name}@stable"), 1)
        self.assertEqual(self.client.invoke(f"{name}@2"), 2)
        v = self.client.versions(name)
        self.assertEqual((v["live"], v["aliases"]), (2, {"stable": 1}))
        self.assertEqual([x["version"] for x in v["versions"]], [1, 2])

        self.assertEqual(self.client.rollback(name)["version"], 1)
        self.assertEqual(self.client.invoke(name), 1)
        self.assertEqual(self.client.rollback(name, 2)["version"], 2)
        self.client.remove_alias(name, "stable")
        with self.assertRaises(ShoalError) as cm:
            self.client.invoke(f"{name}@stable")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "function_not_found"))
        self.client.remove_function(name)

    def test_deploy_invalid_function(self) -> None:
        d = DIRS.make("bad-manifest", ECHO, "no_such_key = 1\n")
        with self.assertRaises(ShoalError) as cm:
            self.client.deploy(d)
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "invalid_function"))

    def test_invoke(self) -> None:
        out = self.client.invoke("py-echo", {"name": "Ada", "n": [1, 2.5, None, "é"]})
        self.assertEqual(out, {"event": {"name": "Ada", "n": [1, 2.5, None, "é"]}, "function": "py-echo"})
        self.assertEqual(self.client.invoke("py-echo")["event"], {})
        self.assertEqual(self.client.invoke("py-echo", [1, 2])["event"], [1, 2])

    def test_unknown_function(self) -> None:
        for call in (lambda: self.client.invoke("py-nope", {}), lambda: self.client.invoke_async("py-nope"), lambda: self.client.function("py-nope")):
            with self.assertRaises(ShoalError) as cm:
                call()
            self.assertEqual(cm.exception.status, 404)
            self.assertEqual(cm.exception.code, "function_not_found")
            self.assertNotIsInstance(cm.exception, FunctionError)

    def test_failed_function_raises_function_error(self) -> None:
        with self.assertRaises(FunctionError) as cm:
            self.client.invoke("py-boom", {"why": "because"})
        e = cm.exception
        self.assertIsInstance(e, ShoalError)
        self.assertEqual(e.type, "raised")
        self.assertEqual(e.exception, "ValueError")
        self.assertIn("boom: because", e.message)
        self.assertIn("ValueError", e.traceback)
        self.assertIn("boom: because", str(e))
        record = self.client.invocation(e.invocation_id)
        self.assertEqual(record["status"], "failed")
        self.assertEqual(record["error"]["exception"], "ValueError")

    def test_async_wait_invocation_logs(self) -> None:
        id = self.client.invoke_async("py-echo", {"x": 1})
        record = self.client.wait(id, timeout=60)
        self.assertEqual(record["status"], "succeeded")
        self.assertEqual(record["mode"], "async")
        self.assertEqual(record["output"], {"event": {"x": 1}, "function": "py-echo"})
        self.assertEqual(self.client.logs(id), f"echo {id}\n")
        self.assertEqual(self.client.invocation(id)["id"], id)
        with self.assertRaises(ShoalError) as cm:
            self.client.invocation("0193f0c2-0000-7000-8000-000000000000")
        self.assertEqual(cm.exception.code, "invocation_not_found")

    def test_list_invocations(self) -> None:
        id = self.client.invoke_async("py-echo", {"x": 2})
        self.client.wait(id, timeout=60)
        page = self.client.invocations(function="py-echo", mode="async", since="1h", limit=1000)
        listed = [i["id"] for i in page["invocations"]]
        self.assertIn(id, listed)
        self.assertTrue(all(i["function"] == "py-echo" and i["mode"] == "async" for i in page["invocations"]))
        first = self.client.invocations(function="py-echo", limit=1)
        self.assertEqual(len(first["invocations"]), 1)
        if "next" in first:
            second = self.client.invocations(function="py-echo", limit=1, cursor=first["next"])
            self.assertNotEqual(second["invocations"][0]["id"], first["invocations"][0]["id"])
        with self.assertRaises(ShoalError) as cm:
            self.client.invocations(status="broken")
        self.assertEqual(cm.exception.code, "invalid_input")
        self.assertIn("use one of", cm.exception.message)

    def test_wait_for_a_failing_async_invocation(self) -> None:
        name = unique("py-boom-once")
        self.client.deploy(DIRS.make(name, BOOM, "retries = 0\n"))
        record = self.client.wait(self.client.invoke_async(name, {"why": "async"}))
        self.assertEqual(record["status"], "failed")
        self.assertEqual(record["error"]["type"], "raised")
        self.client.remove_function(name)

    # ------------------------------------------------------------ categories

    def test_categories_lifecycle(self) -> None:
        name = unique("cat")
        view = self.client.create_category(name, shards=4)
        self.assertEqual((view["name"], view["shards"], view["docs"]), (name, 4, 0))
        self.assertEqual(len(view["shard_stats"]), 4)
        with self.assertRaises(ShoalError) as cm:
            self.client.create_category(name, shards=2)
        self.assertEqual((cm.exception.status, cm.exception.code), (409, "category_exists"))
        self.assertIn(name, [c["name"] for c in self.client.categories()])
        self.client.write(name, [{"a": i} for i in range(10)])
        view = self.client.category(name)
        self.assertEqual(view["docs"], 10)
        self.assertEqual(sum(s["docs"] for s in view["shard_stats"]), 10)
        self.assertEqual(sum(s["bytes"] for s in view["shard_stats"]), view["bytes"])
        with self.assertRaises(ShoalError) as cm:
            self.client.delete_category(name)
        self.assertEqual((cm.exception.status, cm.exception.code), (409, "force_required"))
        self.assertEqual(self.client.category(name)["docs"], 10)
        self.client.delete_category(name, force=True)
        self.assertNotIn(name, [c["name"] for c in self.client.categories()])
        with self.assertRaises(ShoalError) as cm:
            self.client.category(name)
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "category_not_found"))

    def test_write_creates_with_default_shards(self) -> None:
        name = unique("auto")
        ids = self.client.write(name, [{"k": 1}])
        self.assertEqual(len(ids), 1)
        self.assertGreaterEqual(self.client.category(name)["shards"], 1)
        self.client.delete_category(name, force=True)

    def test_write_get_put_delete(self) -> None:
        name = unique("docs")
        docs = [{"id": "a", "v": 1}, {"id": 7, "v": 2}, {"v": 3}, [1, 2], "text", 42]
        ids = self.client.write(name, docs)
        self.assertEqual(ids[:2], ["a", "7"])
        self.assertEqual(len(set(ids)), 6)
        for id, doc in zip(ids, docs):
            self.assertEqual(self.client.get(name, id), doc)
        self.assertEqual(self.client.get(name, 7), {"id": 7, "v": 2})
        # Writing an id again replaces the document.
        self.assertEqual(self.client.write(name, [{"id": "a", "v": 10}]), ["a"])
        self.assertEqual(self.client.get(name, "a"), {"id": "a", "v": 10})
        self.assertEqual(self.client.put(name, "b/c d?", {"hello": "wörld"}), "b/c d?")
        self.assertEqual(self.client.get(name, "b/c d?"), {"hello": "wörld"})
        self.assertEqual(self.client.put(name, "a", {"v": 11}), "a")
        self.assertEqual(self.client.get(name, "a"), {"v": 11})
        self.assertEqual(self.client.category(name)["docs"], 7)
        self.client.delete(name, "a")
        with self.assertRaises(ShoalError) as cm:
            self.client.get(name, "a")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "document_not_found"))
        with self.assertRaises(ShoalError) as cm:
            self.client.delete(name, "a")
        self.assertEqual(cm.exception.code, "document_not_found")
        with self.assertRaises(ShoalError) as cm:
            self.client.get(unique("no-such-category"), "a")
        self.assertEqual(cm.exception.code, "category_not_found")
        self.client.delete_category(name, force=True)

    def test_kv(self) -> None:
        k = unique("kv")
        # The cooldown pattern: the first set(nx, ttl) wins, the second is refused.
        first = self.client.kv_set(f"{k}/cooldown", True, ttl="30s", nx=True)
        self.assertEqual(first["value"], True)
        self.assertEqual(first["expires_at_ms"], first["updated_at_ms"] + 30_000)
        with self.assertRaises(ShoalError) as cm:
            self.client.kv_set(f"{k}/cooldown", True, ttl=30, nx=True)
        self.assertEqual((cm.exception.status, cm.exception.code), (409, "key_conflict"))
        self.assertIn(f"version {first['version']}", str(cm.exception))
        # Compare-and-set, xx, get.
        e = self.client.kv_set(f"{k}/cfg", {"a": [1, "wörld"]})
        self.assertNotIn("expires_at_ms", e)
        e2 = self.client.kv_set(f"{k}/cfg", {"a": 2}, version=e["version"])
        with self.assertRaises(ShoalError) as cm:
            self.client.kv_set(f"{k}/cfg", {"a": 3}, version=e["version"])
        self.assertEqual(cm.exception.code, "key_conflict")
        self.client.kv_set(f"{k}/cfg", None, xx=True)
        self.assertIsNone(self.client.kv_get(f"{k}/cfg")["value"])
        self.assertGreater(self.client.kv_get(f"{k}/cfg")["version"], e2["version"])
        # incr.
        self.assertEqual(self.client.kv_incr(f"{k}/n")["value"], 1)
        self.assertEqual(self.client.kv_incr(f"{k}/n", by=-3)["value"], -2)
        with self.assertRaises(ShoalError) as cm:
            self.client.kv_incr(f"{k}/cfg")
        self.assertEqual(cm.exception.code, "not_an_integer")
        # list by prefix, in pages.
        keys = [e["key"] for e in self.client.kv_list(f"{k}/")]
        self.assertEqual(keys, [f"{k}/cfg", f"{k}/cooldown", f"{k}/n"])
        self.assertEqual(len(list(self.client.kv_list(f"{k}/", limit=2))), 2)
        # delete.
        self.client.kv_delete(f"{k}/n")
        with self.assertRaises(ShoalError) as cm:
            self.client.kv_get(f"{k}/n")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "key_not_found"))
        with self.assertRaises(ShoalError) as cm:
            self.client.kv_delete(f"{k}/cfg", version=1)
        self.assertEqual(cm.exception.code, "key_conflict")
        # A ttl expires on time.
        self.client.kv_set(f"{k}/short", 1, ttl=0.2)
        time.sleep(0.3)
        with self.assertRaises(ShoalError) as cm:
            self.client.kv_get(f"{k}/short")
        self.assertEqual(cm.exception.code, "key_not_found")

    def test_write_generator_in_batches(self) -> None:
        name = unique("gen")
        self.client.create_category(name, shards=3)
        consumed = []

        def gen():
            for i in range(25):
                consumed.append(i)
                yield {"id": f"d{i:03d}", "n": i}

        ids = self.client.write(name, gen(), batch_size=7)
        self.assertEqual(ids, [f"d{i:03d}" for i in range(25)])
        self.assertEqual(len(consumed), 25)
        self.assertEqual(self.client.category(name)["docs"], 25)
        # Byte-bounded batches, and return_ids=False.
        n = self.client.write(name, ({"id": f"e{i}", "pad": "x" * 100} for i in range(30)), batch_bytes=500, return_ids=False)
        self.assertEqual(n, 30)
        self.assertEqual(self.client.category(name)["docs"], 55)
        self.assertEqual(self.client.write(name, iter([])), [])
        self.client.delete_category(name, force=True)

    def test_write_batch_is_atomic(self) -> None:
        name = unique("atomic")
        self.client.create_category(name, shards=2)
        # The second batch holds an id that breaks the rules (too long): that
        # batch fails as a whole, the first stays written.
        docs = [{"id": f"ok{i}"} for i in range(3)] + [{"id": "fine"}, {"id": "x" * 1000}]
        with self.assertRaises(ShoalError) as cm:
            self.client.write(name, docs, batch_size=3)
        self.assertEqual(cm.exception.status, 400)
        self.assertEqual(self.client.category(name)["docs"], 3)
        with self.assertRaises(ShoalError):
            self.client.get(name, "fine")
        with self.assertRaises(ValueError):
            self.client.write(name, [float("nan")])
        self.client.delete_category(name, force=True)

    def test_scan(self) -> None:
        name = unique("scan")
        self.client.create_category(name, shards=4)
        docs = {f"s{i:03d}": {"id": f"s{i:03d}", "n": i} for i in range(53)}
        self.client.write(name, docs.values())
        seen = list(self.client.scan(name, page_size=10))
        self.assertEqual(len(seen), 53)
        self.assertEqual(dict(seen), docs)
        self.assertEqual(sorted(dict(self.client.scan(name)).keys()), sorted(docs))
        self.client.delete_category(name, force=True)

    def test_scan_missing_category(self) -> None:
        with self.assertRaises(ShoalError) as cm:
            list(self.client.scan(unique("missing")))
        self.assertEqual(cm.exception.code, "category_not_found")

    # ------------------------------------------------------------ queries

    def _orders(self, shards: int = 4, n: int = 100) -> str:
        name = unique("orders")
        self.client.create_category(name, shards=shards)
        self.client.write(name, ({"id": f"o{i:03d}", "price": i % 17 + 1, "qty": i % 3 + 1} for i in range(n)))
        self.client.write(name, [{"id": "no-price", "note": "map gives None"}])
        return name

    def test_query_with_reduce(self) -> None:
        name = self._orders()
        expected = sum((i % 17 + 1) * (i % 3 + 1) for i in range(100))
        self.assertEqual(self.client.query(name, "py-sum"), expected)
        result, stats = self.client.query(name, "py-sum", with_stats=True)
        self.assertEqual(result, expected)
        self.assertTrue(stats["reduced"])
        self.assertEqual(stats["docs"], 101)
        self.assertEqual(stats["shards"], 4)
        self.assertEqual(stats["errors"], 0)
        self.assertEqual(stats["failures"], [])
        self.assertGreaterEqual(stats["duration_ms"], 0)
        self.client.delete_category(name, force=True)

    def test_query_reduce_over_nothing_is_none(self) -> None:
        name = unique("empty")
        self.client.create_category(name, shards=2)
        self.assertIsNone(self.client.query(name, "py-sum"))
        self.client.write(name, [{"note": "no price"}])
        result, stats = self.client.query(name, "py-sum", with_stats=True)
        self.assertIsNone(result)
        self.assertEqual(stats["docs"], 1)
        self.client.delete_category(name, force=True)

    def test_query_map_only(self) -> None:
        name = unique("nums")
        self.client.create_category(name, shards=3)
        self.client.write(name, [{"id": f"n{i:02d}", "n": i, "skip": i % 5 == 0} for i in range(40)])
        values = self.client.query(name, "py-only-map")
        expected = [{"n": i, "double": 2 * i} for i in range(40) if i % 5 != 0]
        self.assertEqual(sorted(values, key=lambda v: v["n"]), expected)
        result, stats = self.client.query(name, "py-only-map", with_stats=True)
        self.assertFalse(stats["reduced"])
        self.assertEqual(stats["values"], 32)
        self.assertEqual(stats["docs"], 40)
        self.assertEqual(len(result), 32)
        # Document order: shard by shard, id order within a shard; the scan
        # walks the same order.
        scan_order = [doc["n"] for _, doc in self.client.scan(name) if not doc["skip"]]
        self.assertEqual([v["n"] for v in result], scan_order)
        self.client.delete_category(name, force=True)

    def test_query_iter_streams(self) -> None:
        name = unique("stream")
        self.client.create_category(name, shards=2)
        self.client.write(name, ({"n": i} for i in range(500)))
        stream = self.client.query_iter(name, "py-only-map")
        self.assertIsInstance(stream, QueryStream)
        self.assertIsNone(stream.stats)
        total = 0
        for v in stream:
            total += v["n"]
        self.assertEqual(total, sum(range(500)))
        self.assertEqual(stream.stats["values"], 500)
        # Abandoning a stream half-way leaves the client usable.
        with self.client.query_iter(name, "py-only-map") as stream:
            next(iter(stream))
        self.assertIsNone(self.client.query(name, "py-sum"))  # no prices: no values
        # A reduce module's stream yields nothing and keeps the result.
        with self.client.query_iter(name, "py-fragile") as stream:
            self.assertEqual(list(stream), [])
        self.assertEqual(stream.result, sum(range(500)))
        self.assertTrue(stream.reduced)
        self.client.delete_category(name, force=True)

    def test_query_progress_over_sse(self) -> None:
        name = self._orders(shards=3, n=300)
        progress = []
        result, stats = self.client.query(name, "py-sum", with_stats=True, on_progress=progress.append)
        self.assertEqual(result, sum((i % 17 + 1) * (i % 3 + 1) for i in range(300)))
        self.assertEqual(stats["docs"], 301)
        self.assertTrue(progress, "no progress events")
        self.assertEqual(progress[-1]["docs_total"], 301)
        self.assertTrue(all(p["shards"] == 3 for p in progress))
        self.assertTrue(all(0 <= p["docs_done"] <= p["docs_total"] for p in progress))
        self.client.delete_category(name, force=True)
        # Map-only values over SSE too.
        name = unique("sse-map")
        self.client.create_category(name, shards=2)
        self.client.write(name, ({"n": i} for i in range(50)))
        values = self.client.query(name, "py-only-map", on_progress=lambda p: None)
        self.assertEqual(sorted(v["n"] for v in values), list(range(50)))
        self.client.delete_category(name, force=True)

    def test_query_failure_and_skip_errors(self) -> None:
        name = unique("fragile")
        self.client.create_category(name, shards=2)
        self.client.write(name, [{"id": f"f{i:02d}", "n": i, "bad": i in (3, 11)} for i in range(20)])
        with self.assertRaises(QueryError) as cm:
            self.client.query(name, "py-fragile")
        e = cm.exception
        self.assertIsInstance(e, ShoalError)
        self.assertEqual(e.code, "map_failed")
        self.assertIn(e.doc_id, ("f03", "f11"))
        self.assertEqual(e.error["type"], "raised")
        self.assertEqual(e.exception, "KeyError")
        self.assertIn("no good", e.error["message"])
        self.assertIn("KeyError", e.traceback)
        # The same failure over SSE.
        with self.assertRaises(QueryError) as cm:
            self.client.query(name, "py-fragile", on_progress=lambda p: None)
        self.assertEqual(cm.exception.code, "map_failed")

        result, stats = self.client.query(name, "py-fragile", skip_errors=True, with_stats=True)
        self.assertEqual(result, sum(range(20)) - 3 - 11)
        self.assertEqual(stats["errors"], 2)
        self.assertEqual(sorted(f["id"] for f in stats["failures"]), ["f03", "f11"])
        self.assertEqual({f["error"]["exception"] for f in stats["failures"]}, {"KeyError"})
        self.assertEqual(stats["docs"], 20)
        self.client.delete_category(name, force=True)

    # ------------------------------------------------------------ channels

    def test_channels_publish_subscribe_resume_and_reset(self) -> None:
        name = unique("room")
        info = self.client.configure_channel(name, history_len=3)
        self.assertEqual((info["history_len"], info["offset"]), (3, 0))
        first = self.client.publish(name, {"n": 1})
        self.assertEqual(first["offset"], 1)
        self.client.publish(name, {"n": 2})
        self.assertEqual(self.client.publish(name, b"\x00\xff")["offset"], 3)
        events = self.client.subscribe(name, since=f"{first['epoch']}:1")
        got = [next(events) for _ in range(3)]
        events.close()
        self.assertEqual(got[0], {"event": "ready", "id": f"{first['epoch']}:1", "data": {"epoch": first["epoch"], "offset": 1}})
        self.assertEqual((got[1]["event"], got[1]["data"], got[1]["id"]), ("message", {"n": 2}, f"{first['epoch']}:2"))
        self.assertEqual((got[2]["event"], got[2]["data"]), ("binary", b"\x00\xff"))
        # Past the history of 3: an explicit reset at the head.
        self.client.publish(name, {"n": 4})
        self.client.publish(name, {"n": 5})
        events = self.client.subscribe(name, since="1")
        reset = next(events)
        events.close()
        self.assertEqual(reset["event"], "reset")
        self.assertEqual(reset["data"]["offset"], 5)
        self.assertEqual(self.client.channel(name)["offset"], 5)
        with self.assertRaises(ShoalError) as cm:
            self.client.publish("_docs.x", 1)
        self.assertEqual(cm.exception.status, 400)
        scoped = self.client.create_token("reader", "viewer", channels=[f"subscribe:{name}"])
        self.assertEqual(scoped["role"], "reader")
        with self.assertRaises(ShoalError) as cm:
            Client(URL, scoped["token"]).functions()
        self.assertEqual(cm.exception.status, 403)

    def test_query_errors_before_start(self) -> None:
        name = self._orders(shards=1, n=3)
        with self.assertRaises(ShoalError) as cm:
            self.client.query(unique("missing"), "py-sum")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "category_not_found"))
        with self.assertRaises(ShoalError) as cm:
            self.client.query(name, "py-nope")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "function_not_found"))
        with self.assertRaises(ShoalError) as cm:
            self.client.query(name, "py-not-query")
        self.assertEqual(cm.exception.code, "not_a_query_function")
        self.client.delete_category(name, force=True)


class TransportTest(unittest.TestCase):
    """Connection handling, against a local stand-in server."""

    def test_a_connection_closed_while_idle_is_replaced(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = b'{"status": "ok", "version": "test"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                # Looks kept alive to the client, but is closed right away,
                # as a node that restarted or timed out an idle connection.
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            c = Client(f"http://127.0.0.1:{server.server_address[1]}", "t")
            for _ in range(5):
                self.assertEqual(c.health()["status"], "ok")
            c.close()
        finally:
            server.shutdown()
            server.server_close()

    def test_query_stream_parsing(self) -> None:
        from shoal.query import _ndjson_events, _sse_events

        nd = [b'{"value":1}', b"", b'{"value":{"a":[1,2]}}', b'{"done":{"docs":2}}']
        self.assertEqual(list(_ndjson_events(iter(nd))), [("value", 1), ("value", {"a": [1, 2]}), ("done", {"docs": 2})])
        sse = [
            b": keep-alive",
            b"event: progress",
            b'data: {"docs_done": 0}',
            b"",
            b"event: value",
            b"data: [1,",
            b"data: 2]",
            b"",
            b"event: done",
            b'data:{"docs":2}',
        ]
        self.assertEqual(list(_sse_events(iter(sse))), [("progress", {"docs_done": 0}), ("value", [1, 2]), ("done", {"docs": 2})])

    def test_timeout(self) -> None:
        import socket

        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)  # accepts connections (backlog), never answers
            c = Client(f"http://127.0.0.1:{listener.getsockname()[1]}", "t", timeout=0.2)
            with self.assertRaises(ShoalError) as cm:
                c.health()
            self.assertEqual((cm.exception.status, cm.exception.code), (None, "timeout"))

    def test_bad_url(self) -> None:
        with self.assertRaises(ValueError):
            Client("ftp://127.0.0.1:7700", "t")

    def test_url_without_a_scheme_is_http(self) -> None:
        if not URL:
            self.skipTest("SHOAL_URL must name a running node")
        host_port = URL.split("://", 1)[1].rstrip("/")
        c = Client(host_port, TOKEN)
        self.assertEqual(c.url.split("://", 1)[0], "http")
        self.assertEqual(c.health()["status"], "ok")


if __name__ == "__main__":
    try:
        unittest.main(verbosity=2)
    finally:
        DIRS.cleanup()
