"""The baseline: a plain Celery chain of five no-op tasks, on the saga's own Celery settings.

`make_app` builds the app with `saga.tasks.make_celery`, so serializer, late acks,
prefetch 1, reject-on-worker-lost and publish confirms are exactly the saga's. The first
task carries the chain's start time (the bench's clock); the last one RPUSHes
`[start, end]` to a Redis list the bench reads.

Worker: `celery -A bench.baseline_tasks worker -c 2 --pool prefork -Q $BENCH_QUEUE`, with
BENCH_BROKER_URL, BENCH_QUEUE, BENCH_REDIS_URL and BENCH_RESULTS_KEY in the environment.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery, chain

from saga.settings import Settings
from saga.tasks import make_celery

FIRST, MIDDLE, LAST = "bench.first", "bench.middle", "bench.last"
LENGTH = 5


def make_app(broker_url: str, queue: str, redis_url: str, results_key: str) -> Celery:
    app = make_celery(Settings(broker_url=broker_url, default_queue=queue))
    client: dict[int, Any] = {}  # one Redis client per process (the pool forks)

    def results() -> Any:
        pid = os.getpid()
        if pid not in client:
            import redis

            client.clear()
            client[pid] = redis.Redis.from_url(redis_url)
        return client[pid]

    @app.task(name=FIRST, shared=False)
    def first(start: float) -> float:
        return start

    @app.task(name=MIDDLE, shared=False)
    def middle(start: float) -> float:
        return start

    @app.task(name=LAST, shared=False)
    def last(start: float) -> None:
        results().rpush(results_key, json.dumps([start, time.time()]))

    return app


def start_chain(app: Celery) -> None:
    """Publish one chain of LENGTH no-op tasks, stamped with the time now."""
    tasks = [app.signature(FIRST, args=(time.time(),))]
    tasks += [app.signature(MIDDLE) for _ in range(LENGTH - 2)]
    tasks.append(app.signature(LAST))
    chain(*tasks).apply_async()


app = make_app(
    os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("BENCH_QUEUE", "bench-chain"),
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_RESULTS_KEY", "bench:chain:results"),
)
