"""bench/taps.py counts task-event messages on a real broker, by routing key, as Celery sends them.

A publisher's "task-sent" goes alone (task.sent); a worker's task events go several to one
task.multi message; worker heartbeats are not task events. The bench's cost table reads
task-sent per step as the step messages published, and every task.* message as an event
message, so each must be counted once, on both brokers.
"""

from __future__ import annotations

import uuid

from celery import Celery

from bench.taps import ALL, Tap
from bench.throughput import delete_exchanges


def test_tap_counts_task_event_messages_by_routing_key(broker_url: str) -> None:
    exchange = f"bench-test-{uuid.uuid4().hex[:8]}.events"
    app = Celery("bench_taps_test", broker=broker_url, set_as_current=False)
    app.conf.event_exchange = exchange
    try:
        with Tap(broker_url, exchange) as tap, app.connection_for_write() as connection:
            alone = app.events.Dispatcher(connection, hostname="bench-test")
            for i in range(3):
                alone.send("task-sent", uuid=f"t{i}", name="bench.first")
            alone.send("worker-heartbeat")
            grouped = app.events.Dispatcher(connection, hostname="bench-test",
                                            buffer_group=["task"], buffer_limit=100)
            for kind in ("task-received", "task-started", "task-succeeded"):
                grouped.send(kind, uuid="t0")
            grouped.flush()  # the three in one task.multi message
            assert tap.settled(timeout=10, quiet=0.3) == {ALL: 4, "task.sent": 3}
    finally:
        delete_exchanges(broker_url, [exchange])
