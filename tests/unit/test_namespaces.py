"""The queue of a deployment: SAGA_QUEUE, or `saga.<deployment id>`; foreign messages handed back."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context

from saga.settings import Settings
from saga.tasks import make_celery
from saga.tasks.namespace import (
    DEPLOYMENT_HEADER,
    HAND_BACKS_HEADER,
    IN_PROCESS_QUEUE,
    MAX_HAND_BACKS,
    Namespace,
    foreign,
    hand_back,
    queue_for,
)

REDIS = "redis://127.0.0.1:6379/0"


class Reads:
    """A deployment-id reader that counts its calls (and can fail, like a database down)."""

    def __init__(self, value: str = "3f2a9c1b04de", failures: int = 0) -> None:
        self.value, self.failures, self.calls = value, failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("database down")
        return self.value


def test_without_a_setting_the_queue_is_named_after_the_deployment_read_once():
    reads = Reads("3f2a9c1b04de")
    namespace = Namespace(Settings(broker_url=REDIS), reads)
    assert namespace.queue == queue_for("3f2a9c1b04de") == "saga.3f2a9c1b04de"
    assert namespace.id == "3f2a9c1b04de"
    assert reads.calls == 1


def test_a_failed_read_is_not_kept_the_next_use_reads_again():
    reads = Reads(failures=1)
    namespace = Namespace(Settings(broker_url=REDIS), reads)
    with pytest.raises(ConnectionError):
        _ = namespace.queue
    assert namespace.queue == f"saga.{reads.value}"
    assert reads.calls == 2


@pytest.mark.parametrize("variable", ["SAGA_QUEUE", "SAGA_DEFAULT_QUEUE"])
def test_saga_queue_or_its_older_name_wins_and_the_id_is_still_read_for_the_stamp(variable):
    reads = Reads()
    settings = Settings.from_env({variable: "sagas-eu", "SAGA_BROKER_URL": REDIS})
    namespace = Namespace(settings, reads)
    assert settings.explicit_queue == namespace.queue == "sagas-eu"
    assert namespace.id == reads.value


def test_the_in_memory_broker_needs_no_namespace_and_reads_nothing():
    reads = Reads()
    namespace = Namespace(Settings(broker_url="memory://"), reads)
    assert (namespace.queue, namespace.id) == (IN_PROCESS_QUEUE, None)
    assert reads.calls == 0


def test_saga_queue_and_saga_default_queue_may_agree_but_not_differ():
    assert Settings(queue="q", default_queue="q").explicit_queue == "q"
    with pytest.raises(ValueError, match="SAGA_QUEUE='a' and SAGA_DEFAULT_QUEUE='b' disagree"):
        Settings.from_env({"SAGA_QUEUE": "a", "SAGA_DEFAULT_QUEUE": "b"})


@pytest.mark.parametrize("name", ["amq.saga", " saga", "saga ", "q" * 201])
def test_a_queue_name_the_broker_would_refuse_is_refused_naming_the_variable(name):
    with pytest.raises(ValueError, match="SAGA_QUEUE=.* cannot name a queue"):
        Settings.from_env({"SAGA_QUEUE": name})


def test_by_default_no_queue_is_named():
    assert Settings().explicit_queue == ""


def message(sender: str | None, **more: object) -> Context:
    headers = {} if sender is None else {DEPLOYMENT_HEADER: sender}
    return Context({**headers, **more})


def test_a_message_is_foreign_only_when_stamped_by_another_deployment():
    namespace = Namespace(Settings(broker_url=REDIS, queue="shared"), Reads("aaaaaaaaaaaa"))
    assert not foreign(message("aaaaaaaaaaaa"), namespace)
    assert not foreign(message(None), namespace)  # published by a version before the stamp
    assert not foreign(message("bbbbbbbbbbbb"), None)  # an app made without a namespace
    assert foreign(message("bbbbbbbbbbbb"), namespace)


def test_on_the_in_memory_broker_nothing_is_foreign():
    namespace = Namespace(Settings(broker_url="memory://"), Reads())
    assert not foreign(message("bbbbbbbbbbbb"), namespace)


@pytest.fixture
def in_memory() -> Iterator[Celery]:
    """A real Celery app on the in-process broker, to read what a hand-back publishes."""
    app = make_celery(Settings(broker_url="memory://", queue=f"q-{uuid.uuid4().hex[:8]}"))
    yield app
    app.close()


def take(app: Celery, queue: str) -> Any:
    with app.connection_for_read() as conn, conn.SimpleQueue(queue) as q:
        received = q.get(timeout=2)
        received.ack()
        return received


def test_a_foreign_message_goes_back_to_the_tail_counted_named_once_in_the_log(in_memory, caplog):
    queue = in_memory.conf.task_default_queue
    namespace = Namespace(Settings(broker_url=REDIS, queue=queue), Reads("aaaaaaaaaaaa"))
    other = uuid.uuid4().hex[:12]
    request = message(other, task="saga.step", args=["run", "charge", "shop", 1], kwargs={},
                      timelimit=(35.0, 30.0))
    with caplog.at_level(logging.DEBUG, logger="saga.tasks"):
        assert hand_back(in_memory, request, namespace) == "handed back"
        again = take(in_memory, queue)
        assert hand_back(in_memory, message(other, **again.headers, args=again.payload[0],
                                            kwargs={}), namespace) == "handed back"
    copy = take(in_memory, queue)
    assert copy.headers["task"] == "saga.step" and copy.payload[0] == ["run", "charge", "shop", 1]
    assert (copy.headers[DEPLOYMENT_HEADER], copy.headers[HAND_BACKS_HEADER]) == (other, 2)
    assert copy.headers["timelimit"] == [35.0, 30.0]  # its step's limits travel with it
    levels = [r.levelno for r in caplog.records if other in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]  # named once, then quietly
    warning = caplog.records[0].getMessage()
    assert repr(queue) in warning and "aaaaaaaaaaaa" in warning and "SAGA_QUEUE" in warning


def test_after_the_last_hand_back_a_message_is_dropped_for_its_sweeper(in_memory):
    queue = in_memory.conf.task_default_queue
    namespace = Namespace(Settings(broker_url=REDIS, queue=queue), Reads("aaaaaaaaaaaa"))
    request = message("bbbbbbbbbbbb", task="saga.step", args=[], kwargs={},
                      **{HAND_BACKS_HEADER: MAX_HAND_BACKS})
    assert hand_back(in_memory, request, namespace) == "dropped"
    with in_memory.connection_for_read() as conn, conn.SimpleQueue(queue) as q:
        assert q.qsize() == 0
