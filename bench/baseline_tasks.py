"""The baseline: a plain Celery chain of five no-op tasks, on the saga's own Celery settings.

`make_app` builds the app with `saga.tasks.make_celery`, so serializer, late acks,
prefetch 1, reject-on-worker-lost, publisher confirms (RabbitMQ) and task events (on,
SAGA_TASK_EVENTS' default, on an event exchange of its own as a deployment's) are exactly
the saga's. `add_tasks` gives any app the chain's
three tasks: the first carries the chain's submit time (the bench's clock); the last one
RPUSHes `[submitted, end]` to a Redis list the bench reads. bench/plain_tasks.py is the
same chain on Celery's own defaults.

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


def add_tasks(app: Celery, redis_url: str, results_key: str) -> Celery:
    """Register the chain's no-op tasks on `app`; the last one reports to `results_key`."""
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


def make_app(broker_url: str, queue: str, redis_url: str, results_key: str) -> Celery:
    app = make_celery(Settings(broker_url=broker_url, queue=queue))
    # Its task events on an exchange of its own, as the saga's deployment has (Celery's
    # `celeryev` is everyone's on a shared broker), so the bench can count them.
    app.conf.event_exchange = f"{queue}.events"
    return add_tasks(app, redis_url, results_key)


def start_chain(app: Celery) -> float:
    """Publish one chain of LENGTH no-op tasks, stamped with the time now; the time it returned."""
    tasks = [app.signature(FIRST, args=(time.time(),))]
    tasks += [app.signature(MIDDLE) for _ in range(LENGTH - 2)]
    tasks.append(app.signature(LAST))
    chain(*tasks).apply_async()
    return time.time()


def app_from_env(make: Any) -> Celery:
    return make(os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
                os.environ.get("BENCH_QUEUE", "bench-chain"),
                os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
                os.environ.get("BENCH_RESULTS_KEY", "bench:chain:results"))


app = app_from_env(make_app)
