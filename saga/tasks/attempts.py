"""Every attempt of a step or compensation as one task in Flower, named, with its real outcome.

A step message's own task reports the attempt it ran (the first one it claimed): SUCCESS,
FAILURE (it raises `AttemptFailed`, declared expected: logged at INFO, no traceback) or
RETRY (it raises `celery.exceptions.Retry` itself: nothing is republished, the engine
schedules the next attempt). The attempts a worker then runs inline have no message, so
`InlineEvents` sends their task events by hand, the same events a worker sends for a task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.exceptions import Retry

from saga.definitions import Saga
from saga.events import Event, StepChecked, StepFailed, StepSucceeded
from saga.run import Checked, Role

if TYPE_CHECKING:
    from saga.engine import Claim
    from saga.worker.runner import StepResult

__all__ = ["AttemptFailed", "InlineEvents", "task_name", "state_of", "finish"]

log = logging.getLogger("saga.tasks")

SUCCESS, FAILURE, RETRY = "SUCCESS", "FAILURE", "RETRY"  # Celery's task states
_IDS = uuid.UUID("6f1d7b0e-5a0c-4d53-9a43-2f1c5e0b7a11")  # inline attempts' task ids: uuid5 in this


class AttemptFailed(Exception):
    """An attempt failed; its task in Flower is FAILURE, or RETRY when another attempt follows."""


def task_name(saga: str, step: str, role: Role | str) -> str:
    """How Flower names an attempt: `order_fulfillment.charge_card`, or with `.compensate`."""
    return f"{saga}.{step}.compensate" if role == Role.COMPENSATE else f"{saga}.{step}"


def state_of(event: Event, retried: bool) -> str:
    """SUCCESS, RETRY (the committed run gives the step another attempt) or FAILURE."""
    if isinstance(event, StepSucceeded):
        return SUCCESS
    if isinstance(event, StepChecked):  # verify found it done (or nothing to undo), or parked it
        return FAILURE if event.answer is Checked.UNKNOWN else SUCCESS
    return RETRY if retried else FAILURE


def _text(state: str, attempt: int, event: Event, changed: bool = True) -> str:
    if not changed:
        return f"attempt {attempt} superseded: its outcome came after the step moved on"
    if state == SUCCESS:
        return f"attempt {attempt} succeeded"
    if isinstance(event, StepChecked):
        return f"attempt {attempt} parked: verify cannot tell whether an earlier attempt took effect"
    error = getattr(event, "error", "")
    return f"attempt {attempt} failed{', will retry' if state == RETRY else ''}: {error}"


def finish(result: StepResult) -> str:
    """What a step message's task returns (SUCCESS) or raises for the attempt it ran."""
    event = result.event
    if not isinstance(event, (StepSucceeded, StepFailed, StepChecked)):
        return result.outcome  # no attempt ran: a duplicate or stale message, or the log was away
    state = state_of(event, result.retried)
    text = _text(state, result.attempt, event, result.outcome != "superseded")
    if result.outcome == "superseded" or state == SUCCESS:
        return text + (f"; then {result.inline} more inline" if result.inline else "")
    if state == RETRY:
        raise Retry(text, exc=AttemptFailed(text))
    raise AttemptFailed(text)


class InlineEvents:
    """Task events for the attempts a worker runs inline, so Flower lists them as tasks.

    Given to the Worker as its `attempts` listener. Sent only from inside a task of a worker
    with task events on, under that worker's name and with the message's task as parent.
    Never raises: a broker that cannot take an event costs the event, not the step.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._dispatcher: Any = None
        self._pid = 0
        self._started: dict[str, float] = {}
        self._failing = False

    def began(self, saga: Saga, claim: Claim, inline: bool) -> None:
        request = self._carrier(inline)
        if request is None:
            return
        task_id = attempt_id(claim)
        self._started[task_id] = time.monotonic()
        kwargs = {"run_id": claim.run_id, "saga": saga.name, "version": saga.version,
                  "step": claim.step, "role": str(claim.role), "attempt": claim.attempt}
        self._send(request.hostname, [
            ("task-received", {"uuid": task_id, "name": task_name(saga.name, claim.step, claim.role),
                               "args": "()", "kwargs": repr(kwargs), "retries": claim.attempt - 1,
                               "root_id": request.root_id or request.id, "parent_id": request.id}),
            ("task-started", {"uuid": task_id}),
        ])

    def ended(self, saga: Saga, claim: Claim, event: Event, changed: bool, inline: bool,
              retried: bool) -> None:
        request = self._carrier(inline)
        if request is None:
            return
        task_id = attempt_id(claim)
        began = self._started.pop(task_id, None)
        state = state_of(event, retried)
        text = _text(state, claim.attempt, event, changed)
        if state == SUCCESS or not changed:
            runtime = time.monotonic() - began if began is not None else 0.0
            outcome = ("task-succeeded", {"uuid": task_id, "result": repr(text), "runtime": runtime})
        else:
            outcome = ("task-retried" if state == RETRY else "task-failed",
                       {"uuid": task_id, "exception": repr(AttemptFailed(text)), "traceback": ""})
        self._send(request.hostname, [outcome])

    def _carrier(self, inline: bool) -> Any:
        """The request of the worker task running this attempt; None when no event is due."""
        if not inline or not self.app.conf.worker_send_task_events:
            return None  # the message's own task reports its first attempt
        task = self.app.current_worker_task
        return task.request if task is not None else None

    def _send(self, hostname: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            with self._lock:
                if self._dispatcher is None or self._pid != os.getpid():
                    # Its own connection, unconfirmed (an event is worth no round trip);
                    # each call's events go as one message ("task.multi").
                    connection = self.app.connection_for_write(
                        transport_options={"confirm_publish": False})
                    self._dispatcher = self.app.events.Dispatcher(
                        connection, hostname=hostname, buffer_while_offline=False,
                        buffer_group={"task"}, buffer_limit=10)
                    self._pid = os.getpid()
                for type_, fields in events:
                    self._dispatcher.send(type_, **fields)
                self._dispatcher.flush(errors=False)
            self._failing = False
        except Exception as exc:
            self._reset()
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(level, "could not send the task events of an inline attempt: %s", exc)

    def _reset(self) -> None:
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            try:
                dispatcher.close()
                dispatcher.connection.release()
            except Exception:  # already broken: nothing more to free
                pass


def attempt_id(claim: Claim) -> str:
    """An inline attempt's task id: the same for the same claim (its fence is unique)."""
    return str(uuid.uuid5(_IDS, f"{claim.run_id}/{claim.role}/{claim.step}/{claim.fence}"))
