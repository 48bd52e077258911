"""A start's first steps are published on threads of their own, so its 201 need not wait.

A run is committed before its 201 is sent. The broker message that follows only tells a
worker to look (it claims the step from the saga log), and a message lost on the way is
published again by the sweeper after SAGA_REDISPATCH_S. So the request hands the publish
(two broker round trips on RabbitMQ, each waiting for a publisher confirm) to this pool
and answers; the message leaves as soon as a pool thread takes it, well under a
millisecond when the broker keeps up.

When it does not, the request publishes itself once `backlog` publishes wait: a start
then costs what it did before, and no message waits behind a long queue. A worker that
stops gracefully (gunicorn's SIGTERM) sends what is pending before it exits; one killed
outright leaves those runs to the sweeper. On the in-memory broker (`saga dev`, tests)
publishing is a function call, and is done in the request.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("saga.api")

KEY = "saga_publisher"  # the app's Publisher, or None, in app.extensions
THREADS = 4  # publishes in flight off the request threads, per process
BACKLOG = 16  # publishes handed over and not done yet, per process; past it, inline


class Publisher:
    """Runs each publish handed to it on a pool thread of this process."""

    def __init__(self, threads: int = THREADS, backlog: int = BACKLOG) -> None:
        self.threads = threads
        self._slots = threading.BoundedSemaphore(backlog)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def __call__(self, publish: Callable[[], None]) -> None:
        if not self._slots.acquire(blocking=False):
            publish()  # the broker is behind: this request waits for it, as before
            return
        try:
            self._executor().submit(self._run, publish)
        except RuntimeError:  # the interpreter is shutting down: no new work for the pool
            self._slots.release()
            publish()

    def _run(self, publish: Callable[[], None]) -> None:
        try:
            publish()  # Engine.publish logs a broker that refuses; anything else is a bug
        except Exception:
            log.exception("publishing a start failed; the sweeper will publish it again")
        finally:
            self._slots.release()

    def _executor(self) -> ThreadPoolExecutor:
        # Made in the process that publishes: gunicorn forks its workers after the app is
        # built, and a thread does not survive a fork. Its threads are joined at exit,
        # after they have run what is queued.
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    self._pool = ThreadPoolExecutor(self.threads,
                                                    thread_name_prefix="saga-publish")
                    self._pid = os.getpid()
        return self._pool


def for_broker(broker_url: str) -> Publisher | None:
    """A Publisher for a real broker; None (publish in the request) for the in-memory one."""
    return None if broker_url.startswith("memory") else Publisher()
