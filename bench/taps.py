"""Broker-side counts of the task events an exchange carries: a tap on it, by routing key.

The broker is shared, so its global counters (RabbitMQ's, Redis' `INFO commandstats`) mix
in everyone's traffic, and RabbitMQ's per-queue statistics need the management plugin,
which this broker does not run. Step messages themselves cannot be tapped: Celery
publishes a message for a direct queue to the default exchange, routed by the queue's name
alone, so nothing can be bound beside it. Task events can: the saga's go to its
deployment's own event exchange (`saga.<deployment id>.events`), and the bench gives the
chain on the saga's settings one of its own too. Every step message the saga publishes is
announced by one "task-sent" event just before it (CeleryDispatcher._announce), so the
task.sent events a tap sees are the step messages published. A worker buffers its own task
events and publishes them several to a `task.multi` message: the tap counts event
messages (what the broker carries), not events.

- RabbitMQ: a queue per routing key pattern, bound to the topic exchange; the count is its
  message count (a passive declare).
- Redis, where Celery makes the event exchange a fanout (PUBLISH on
  `/<db>.<exchange>/<routing key>`): a PSUBSCRIBE thread counts by channel.

A watcher costs the broker a little, as Flower does: attach a tap around a phase that is not
timed.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from types import TracebackType
from typing import Any

import redis
from kombu import Connection

ALL = "task.*"  # every task event (worker heartbeats and worker-online are not counted)
# A publisher's "task-sent" goes alone; a worker's own task events go in groups, several to a
# `task.multi` message, so the tap counts messages, not events, except for these.
KEYS = ("task.sent",)


class Tap:
    """Counts of the task events published to `exchange`: every one (ALL) and those of
    each routing key in KEYS; `counts()` gives them so far."""

    def __init__(self, broker_url: str, exchange: str) -> None:
        self.broker_url, self.exchange = broker_url, exchange
        self.name = f"bench-tap-{uuid.uuid4().hex[:8]}"
        self.redis = broker_url.startswith(("redis://", "rediss://"))
        self._seen: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: Connection | None = None
        self._channel: Any = None
        self._queues = {key: f"{self.name}-{key}" for key in (ALL, *KEYS)}

    def __enter__(self) -> Tap:
        if self.redis:
            self._subscribe()
            return self
        self._connection = Connection(self.broker_url, connect_timeout=5)
        self._channel = self._connection.channel()
        # As Celery declares it (kombu's defaults: durable, not auto-deleted): a no-op if it
        # exists, and the binding works before the first event if not.
        self._channel.exchange_declare(exchange=self.exchange, type="topic", durable=True,
                                       auto_delete=False)
        for key, queue in self._queues.items():
            self._channel.queue_declare(queue=queue, durable=False, auto_delete=False)
            self._channel.queue_bind(queue=queue, exchange=self.exchange,
                                     routing_key="task.#" if key == ALL else key)
        return self

    def _subscribe(self) -> None:
        client = redis.Redis.from_url(self.broker_url)
        db = client.connection_pool.connection_kwargs.get("db", 0)
        prefix = f"/{db}.{self.exchange}/"
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        pubsub.psubscribe(f"{prefix}task.*")
        reply = pubsub.get_message(timeout=5)  # the subscription's confirmation
        if reply is None or reply.get("type") != "psubscribe":
            pubsub.close()
            client.close()
            raise RuntimeError(f"the event tap could not subscribe: {reply!r}")

        def listen() -> None:
            try:
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.1)
                    if message is None or message.get("type") != "pmessage":
                        continue
                    key = message["channel"].decode().removeprefix(prefix)
                    self._seen[ALL] += 1
                    self._seen[key] += 1
            finally:
                pubsub.close()
                client.close()

        self._thread = threading.Thread(target=listen, name="bench-event-tap", daemon=True)
        self._thread.start()

    def counts(self) -> dict[str, int]:
        """ALL and each of KEYS: how many such events the exchange carried so far."""
        if self.redis:
            return {key: self._seen[key] for key in self._queues}
        return {key: int(self._channel.queue_declare(queue=queue, passive=True).message_count)
                for key, queue in self._queues.items()}

    def settled(self, timeout: float = 10.0, quiet: float = 0.5) -> dict[str, int]:
        """The counts once they stopped changing for `quiet` seconds (an attempt's events
        follow its commit by a moment); the last ones read if `timeout` passes first."""
        deadline = time.monotonic() + timeout
        last, since = self.counts(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.counts()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.redis:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5)
            return
        assert self._connection is not None
        try:
            for queue in self._queues.values():
                self._channel.queue_delete(queue=queue)
        finally:
            self._connection.close()
