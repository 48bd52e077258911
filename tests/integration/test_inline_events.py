"""The task events of attempts run inline: held, then published as one broker message.

A real broker carries them; a consumer bound to the app's event exchange counts the
messages and reads the events they hold, as Flower would. Each "message" is a Celery task
run eagerly (`apply`), so the events are sent from inside a task, as in a worker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery
from celery.events.event import get_exchange
from kombu import Queue

from saga import Saga, Step
from saga.engine import Claim
from saga.events import StepFailed, StepSucceeded
from saga.observe.metrics import TASK_EVENT_MESSAGES
from saga.run import Role
from saga.settings import Settings
from saga.tasks import InlineEvents, make_celery
from saga.tasks.attempts import INLINE, attempt_id
from tests.stack import wait_for

SAGA = Saga("inline_events", steps=[Step(f"s{i}", lambda ctx: None) for i in range(1, 5)])


class Watcher:
    """Every message on the app's event exchange, its body (a list for "task.multi")."""

    def __init__(self, app: Celery) -> None:
        self.bodies: list[Any] = []
        self._stop = threading.Event()
        self._connection = app.connection_for_read()
        exchange = get_exchange(self._connection, name=app.conf.event_exchange)
        queue = Queue(f"{app.conf.event_exchange}.watch", exchange, routing_key="#",
                      auto_delete=True, durable=False)
        self._consumer = self._connection.Consumer(queue, callbacks=[self._got],
                                                   accept=["json"])
        self._consumer.consume()  # bound now: a fanout (Redis) reaches bound queues only
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _got(self, body: Any, message: Any) -> None:
        self.bodies.append(body)
        message.ack()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self._connection.drain_events(timeout=0.1)
            except TimeoutError:
                pass

    def events(self) -> list[dict[str, Any]]:
        return [e for body in self.bodies for e in (body if isinstance(body, list) else [body])]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.cancel()
        self._connection.release()


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    name = f"saga-test-{uuid.uuid4().hex[:8]}"
    app = make_celery(Settings(database_url="sqlite://", broker_url=broker_url, queue=name))
    app.conf.event_exchange = f"{name}.events"  # this test's alone: no one else's events
    yield app
    app.close()


@pytest.fixture
def watcher(app: Celery) -> Iterator[Watcher]:
    watching = Watcher(app)
    yield watching
    watching.close()


def claim(step: str, attempt: int = 1) -> Claim:
    return Claim(f"run-{uuid.uuid4().hex[:6]}", step, Role.FORWARD, attempt, fence=attempt,
                 input={}, outputs={}, lease_s=30.0, lease_expires_at=datetime.now(UTC))


def in_task(app: Celery, body: Callable[[], None]) -> str:
    """Run `body` inside a Celery task, as a worker runs a step message; the task's id."""
    @app.task(name=f"t.{uuid.uuid4().hex[:6]}", shared=False)
    def message() -> None:
        body()

    return str(message.apply().id)


def test_a_messages_inline_attempts_go_as_one_event_message(app, watcher):
    # Given a worker's listener, and a message that runs three attempts inline after its
    # own, the last of them failing
    listener = InlineEvents(app, flush_after_s=30)  # only the message's end publishes here
    claims = [claim(f"s{i}") for i in (2, 3, 4)]
    counted = TASK_EVENT_MESSAGES.labels(INLINE)._value.get()

    def run() -> None:
        for held in claims:
            listener.began(SAGA, held, inline=True)
            outcome = StepSucceeded(held.step, held.role, held.fence, None) if held.step != "s4" \
                else StepFailed(held.step, held.role, held.fence, "503")
            listener.ended(SAGA, held, outcome, changed=True, inline=True, retried=False)
        listener.began(SAGA, claim("s1"), inline=False)  # the message's own: Celery's to tell
        listener.delivered()

    # When the message's task runs them
    parent = in_task(app, run)
    # Then one broker message carried all their events, in order, each named for its step,
    # with the message's task as parent
    wait_for(lambda: len(watcher.events()) >= 9, 10, "the inline attempts' events")
    assert len(watcher.bodies) == 1 and isinstance(watcher.bodies[0], list)
    told = [(e["type"], e["uuid"]) for e in watcher.events()]
    assert told == [(kind, attempt_id(held)) for held in claims
                    for kind in ("task-received", "task-started",
                                 "task-failed" if held.step == "s4" else "task-succeeded")]
    received = [e for e in watcher.events() if e["type"] == "task-received"]
    assert [e["name"] for e in received] == ["inline_events.s2", "inline_events.s3",
                                             "inline_events.s4"]
    assert {e["parent_id"] for e in received} == {parent}
    # each stamped when it happened, not when published
    stamps = [e["timestamp"] for e in watcher.events()]
    assert stamps == sorted(stamps)
    # And the message is counted
    assert TASK_EVENT_MESSAGES.labels(INLINE)._value.get() == counted + 1


def test_an_attempt_still_running_shows_before_the_message_ends(app, watcher):
    # Given a listener that publishes what waited half a second
    listener = InlineEvents(app, flush_after_s=0.5)
    held = claim("s2")
    seen_while_running: list[float] = []

    def run() -> None:
        listener.began(SAGA, held, inline=True)
        began = time.monotonic()
        # When the attempt runs on (until its events are seen, or for 10 s)
        wait_for(lambda: len(watcher.events()) >= 2, 10, "the running attempt's events")
        seen_while_running.append(time.monotonic() - began)
        listener.ended(SAGA, held, StepSucceeded("s2", Role.FORWARD, 1, None), changed=True,
                       inline=True, retried=False)
        listener.delivered()

    in_task(app, run)
    # Then Flower heard of it while it ran, within about twice the wait
    assert seen_while_running and seen_while_running[0] < 3.0
    assert [e["type"] for e in watcher.events()[:2]] == ["task-received", "task-started"]
    # And its outcome followed when the message ended
    wait_for(lambda: len(watcher.events()) == 3, 10, "the attempt's outcome")
    assert watcher.events()[2]["type"] == "task-succeeded"
