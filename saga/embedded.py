"""The embedded stack: a Celery worker and the sweeper as threads of this process.

With the defaults (a SQLite file and Celery's in-memory broker) this needs no server at
all; the tasks, engine and store are the same code the real stack runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery.contrib.testing.worker import start_worker

import saga.migrations as migrations
from saga.registry import Registry
from saga.settings import Settings
from saga.system import System, build
from saga.tasks import prepare_worker


@contextmanager
def embedded(settings: Settings, registry: Registry | None = None,
             migrate: bool = True) -> Iterator[System]:
    """Run a worker and a sweeper in threads while the block runs."""
    system = build(settings, registry)
    if migrate:
        migrations.upgrade(system.store.engine)
    queue = prepare_worker(system.celery, system.dispatcher.namespace)
    stop = threading.Event()
    sweeping = threading.Thread(target=system.sweeper.run_forever, args=(stop,),
                                name="saga-sweeper", daemon=True)
    with start_worker(system.celery, pool="threads", concurrency=settings.worker_concurrency,
                      perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30,
                      queues=[queue]):
        sweeping.start()
        try:
            yield system
        finally:
            stop.set()
            sweeping.join(timeout=10)
