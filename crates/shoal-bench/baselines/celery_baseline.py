"""Celery baseline of the queue figures of `shoal-bench`, on a redis-server the
bench started (`--broker`). Two modes, each printing one JSON line with its
figures on stdout (progress goes to stderr):

    tasks   Celery end to end: starts `celery worker --pool prefork
            --concurrency 2` (this module is its app), enqueues `--n` trivial
            tasks with `apply_async` from this process over one producer
            connection, and times from the first send until every task has
            run. Each task increments a counter in Redis (database 1); the
            client polls it. Settings: `task_acks_late` (the message is acked
            after the task ran, as Shoal acks after the handler), results
            ignored, prefetch multiplier 4 (Celery's default).

    broker  Celery's broker alone, without a worker: kombu publishes `--n`
            messages on a queue, then a kombu consumer drains them, acking
            each one (no task runs). Times the two steps.

Before timing, `tasks` runs `--warmup` tasks so that the worker processes
are up and connected.

    python celery_baseline.py tasks --broker redis://127.0.0.1:PORT/0 --n 20000
    python celery_baseline.py broker --broker redis://127.0.0.1:PORT/0 --n 20000
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

from celery import Celery

BROKER = os.environ.get("SHOAL_BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0")
TASK_QUEUE = "bench-tasks"
COUNTER = "bench:done"

app = Celery("celery_baseline", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    task_default_queue=TASK_QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    accept_content=["json"],
    task_serializer="json",
)

_counter = None


def counter():
    """A Redis client on database 1 of the broker's server, one per process
    (made after the prefork worker forked)."""
    global _counter
    if _counter is None:
        import redis

        _counter = redis.Redis.from_url(counter_url(BROKER))
    return _counter


def counter_url(broker):
    base = broker.rsplit("/", 1)[0] if broker.count("/") > 2 else broker
    return base + "/1"


@app.task(name="bench.noop")
def noop(i):
    counter().incr(COUNTER)


def log(*parts):
    print("[celery_baseline]", *parts, file=sys.stderr, flush=True)


def versions():
    import kombu
    import redis

    info = counter().info("server")
    return {
        "python": platform.python_version(),
        "celery": __import__("celery").__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": info.get("redis_version"),
    }


def wait_count(want, limit_s):
    """Polls the counter until it reaches `want`; returns the time it did."""
    r = counter()
    deadline = time.perf_counter() + limit_s
    while True:
        got = int(r.get(COUNTER) or 0)
        now = time.perf_counter()
        if got >= want:
            return now, got
        if now > deadline:
            raise SystemExit("only %d of %d tasks ran within %.0f s" % (got, want, limit_s))
        time.sleep(0.002)


def start_worker(args):
    env = dict(os.environ, SHOAL_BENCH_CELERY_BROKER=args.broker)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "celery", "-A", "celery_baseline", "worker",
        "--pool", "prefork", "--concurrency", str(args.concurrency),
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "WARNING", "-Q", TASK_QUEUE, "-n", "bench@%h",
    ]
    log("starting", " ".join(cmd[2:]))
    # It stays in this process's group: the bench kills the group when this
    # script is done, so nothing is left behind even if it fails.
    return subprocess.Popen(cmd, cwd=here, env=env, stdin=subprocess.DEVNULL,
                            stdout=sys.stderr, stderr=sys.stderr)


def stop_worker(proc):
    """Warm shutdown (SIGTERM: the pool processes stop too), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_tasks(args):
    r = counter()
    r.delete(COUNTER)
    worker = start_worker(args)
    try:
        t = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for i in range(args.warmup):
                noop.apply_async((i,), producer=producer)
        wait_count(args.warmup, args.limit)
        log("worker ready after %.2f s (%d warm-up tasks)" % (time.perf_counter() - t, args.warmup))
        r.set(COUNTER, 0)
        time.sleep(0.2)
        n = args.n
        with app.producer_or_acquire() as producer:
            t0 = time.perf_counter()
            for i in range(n):
                noop.apply_async((i,), producer=producer)
            t_sent = time.perf_counter()
        done_at, got = wait_count(n, args.limit)
        total = done_at - t0
        out = {
            "mode": "tasks",
            "n": n,
            "concurrency": args.concurrency,
            "send_s": t_sent - t0,
            "total_s": total,
            "per_s": n / total,
            "ran": got,
            "acks_late": True,
            "prefetch_multiplier": 4,
        }
        if worker.poll() is not None:
            raise SystemExit("the worker exited with %s" % worker.returncode)
    finally:
        stop_worker(worker)
    out.update(versions())
    return out


def run_broker(args):
    from kombu import Connection, Exchange, Queue

    name = "bench-broker"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    n = args.n
    with Connection(args.broker) as conn:
        conn.ensure_connection(max_retries=3)
        with conn.channel() as ch:
            queue(ch).declare()
            queue(ch).purge()
        producer = conn.Producer(serializer="json")
        t0 = time.perf_counter()
        for i in range(n):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key=name, retry=False)
        t_sent = time.perf_counter()

        got = [0]

        def on_message(body, message):
            message.ack()
            got[0] += 1

        with conn.Consumer(queue, callbacks=[on_message], accept=["json"], prefetch_count=args.prefetch):
            t1 = time.perf_counter()
            deadline = t1 + args.limit
            while got[0] < n:
                if time.perf_counter() > deadline:
                    raise SystemExit("only %d of %d messages consumed within %.0f s" % (got[0], n, args.limit))
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
            t_done = time.perf_counter()
    send = t_sent - t0
    drain = t_done - t1
    out = {
        "mode": "broker",
        "n": n,
        "prefetch": args.prefetch,
        "send_s": send,
        "drain_s": drain,
        "total_s": send + drain,
        "per_s": n / (send + drain),
        "consumed": got[0],
    }
    out.update(versions())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["tasks", "broker"])
    p.add_argument("--broker", required=True, help="redis://127.0.0.1:PORT/0")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=2, help="prefork worker processes")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--prefetch", type=int, default=100, help="the broker consumer's prefetch count")
    p.add_argument("--limit", type=float, default=300, help="seconds before giving up")
    args = p.parse_args()
    global BROKER
    BROKER = args.broker
    app.conf.broker_url = args.broker
    out = run_tasks(args) if args.mode == "tasks" else run_broker(args)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
