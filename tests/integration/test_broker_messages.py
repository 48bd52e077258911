"""What the saga puts on the broker besides its steps, and how many messages it takes.

The task events of attempts run inline are held, then published as one broker message: a
consumer bound to the app's event exchange counts the messages and reads the events they
hold, as Flower would. Each "message" is a Celery task run eagerly (`apply`), so the events
are sent from inside a task, as in a worker. A worker's own events go unconfirmed, its step
messages confirmed; every step message and task-sent event is counted for Prometheus.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.events.event import get_exchange
from kombu import Queue

from saga import Saga, Step
from saga.engine import Claim
from saga.events import CompensateStep, RunStep, StepFailed, StepSucceeded
from saga.observe.metrics import MESSAGES_PUBLISHED, TASK_EVENT_MESSAGES
from saga.run import Role
from saga.settings import Settings
from saga.tasks import CeleryDispatcher, InlineEvents, Namespace, exchanges_for, make_celery
from saga.tasks.attempts import INLINE, attempt_id
from saga.tasks.consumer import StepConsumer
from saga.tasks.dispatcher import SENT
from tests.conftest import BROKERS, need
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
def deployment() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(broker_url: str, deployment: str) -> Settings:
    return Settings(database_url="sqlite://", broker_url=broker_url, queue=f"saga-{deployment}")


@pytest.fixture
def app(settings: Settings, deployment: str) -> Iterator[Celery]:
    app = make_celery(settings)
    app.conf.update(exchanges_for(deployment))  # this test's alone: no one else's events
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


def test_a_rabbitmq_workers_own_events_go_unconfirmed_and_its_step_messages_confirmed():
    # Given a worker's app on RabbitMQ, and its consumer (Celery's Events step asks it for
    # the events' connection; a stand-in for the consumer's own state)
    need("rabbitmq", BROKERS["rabbitmq"])
    app = make_celery(Settings(database_url="sqlite://", broker_url=BROKERS["rabbitmq"],
                               queue=f"saga-test-{uuid.uuid4().hex[:8]}"))
    assert app.conf.worker_consumer == "saga.tasks.consumer:StepConsumer"
    consumer = SimpleNamespace(app=app, ensure_connected=lambda connection: connection)
    # When it publishes on that connection, and the app publishes a step message
    published = {}
    for name, opened in (("events", StepConsumer.connection_for_write(consumer)),
                         ("steps", app.connection_for_write())):
        with opened as connection:
            producer = connection.Producer()
            producer.publish({}, routing_key="saga-test-no-such-queue")  # dropped: unroutable
            published[name] = producer.channel._confirm_selected  # py-amqp's, set on use
    # Then the events waited for no confirm, the step message did
    assert published == {"events": False, "steps": True}
    app.close()


def test_each_step_message_and_its_task_sent_event_are_counted(app, watcher, settings,
                                                              deployment):
    # Given a publisher on this test's queue and event exchange
    dispatcher = CeleryDispatcher(app, Namespace(settings, lambda: deployment))
    counts = {"forward": MESSAGES_PUBLISHED.labels("forward")._value.get(),
              "compensate": MESSAGES_PUBLISHED.labels("compensate")._value.get(),
              "sent": TASK_EVENT_MESSAGES.labels(SENT)._value.get()}
    try:
        # When it publishes a step and a compensation
        dispatcher.send("run-1", "inline_events", 1, [RunStep("s1"), CompensateStep("s2")], {})
        # Then each is one message counted by role, each announced by one event message
        wait_for(lambda: len(watcher.bodies) == 2, 10, "the two task-sent events")
        assert [e["type"] for e in watcher.events()] == ["task-sent", "task-sent"]
        assert MESSAGES_PUBLISHED.labels("forward")._value.get() == counts["forward"] + 1
        assert MESSAGES_PUBLISHED.labels("compensate")._value.get() == counts["compensate"] + 1
        assert TASK_EVENT_MESSAGES.labels(SENT)._value.get() == counts["sent"] + 2
    finally:
        with app.connection_for_write() as connection:  # its messages were never to run
            connection.default_channel.queue_delete(dispatcher.queue)
