"""The baseline as a user writes it: the same chain of five no-op tasks on Celery's defaults.

A plain `Celery(broker=...)` with the JSON serializer named and its own default queue (the
broker is shared), nothing else: prefetch multiplier 4, acks before the task runs, no
publisher confirms, no task events. The tasks are bench/baseline_tasks.py's.

Worker: `celery -A bench.plain_tasks worker -c 2 --pool prefork` (it consumes
task_default_queue), with BENCH_BROKER_URL, BENCH_QUEUE, BENCH_REDIS_URL and
BENCH_RESULTS_KEY in the environment.
"""

from __future__ import annotations

from celery import Celery

from bench.baseline_tasks import add_tasks, app_from_env


def make_app(broker_url: str, queue: str, redis_url: str, results_key: str) -> Celery:
    app = Celery("bench_plain", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    task_default_queue=queue)
    return add_tasks(app, redis_url, results_key)


app = app_from_env(make_app)
