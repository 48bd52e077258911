"""Every attempt of a step or compensation as one task in Flower, named, with its real outcome.

A step message's own task reports the attempt it ran (the first one it claimed): SUCCESS,
FAILURE (it raises `AttemptFailed`, declared expected: logged at INFO, no traceback) or
RETRY (it raises `celery.exceptions.Retry` itself: nothing is republished, the engine
schedules the next attempt). The attempts a worker then runs inline have no message, so
`InlineEvents` sends their task events by hand, the same events a worker sends for a task,
the events of one message's attempts together.
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
FLUSH_AFTER_S = 0.5  # inline attempts' events wait at most about this long to be published
HELD_MAX = 96  # events one message may carry (32 attempts); more are published in several
INLINE = "inline"  # saga_task_event_messages_total{kind}: the events of inline attempts
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

    Events are held, each stamped when it happened, and published together as one broker
    message ("task.multi", as Celery's worker batches its own): when the message's task is
    over (`delivered`), or, while an attempt still runs, once they have waited `flush_after_s`
    (a thread looks that often), so Flower shows a long attempt running within about twice
    that. A message running five steps inline sent 8 event messages; it sends one.
    """

    def __init__(self, app: Celery, flush_after_s: float = FLUSH_AFTER_S) -> None:
        self.app = app
        self.flush_after_s = flush_after_s
        self._lock = threading.Lock()
        self._dispatcher: Any = None
        self._pid = 0
        self._started: dict[tuple[str, str, str, int], tuple[str, float, str]] = {}
        self._held = 0  # events held by the dispatcher, not yet published
        self._held_since = 0.0  # when the first of them was
        self._failing = False
        self._enabled: bool | None = None  # the app's worker_send_task_events, read once

    def began(self, saga: Saga, claim: Claim, inline: bool) -> None:
        request = self._carrier(inline)
        if request is None:
            return
        task_id = attempt_id(claim)
        self._started[_key(claim)] = (task_id, time.monotonic(), request.hostname)
        kwargs = {"run_id": claim.run_id, "saga": saga.name, "version": saga.version,
                  "step": claim.step, "role": str(claim.role), "attempt": claim.attempt}
        self._hold(request.hostname, [
            ("task-received", {"uuid": task_id, "name": task_name(saga.name, claim.step, claim.role),
                               "args": "()", "kwargs": repr(kwargs), "retries": claim.attempt - 1,
                               "root_id": request.root_id or request.id, "parent_id": request.id}),
            ("task-started", {"uuid": task_id}),
        ])

    def ended(self, saga: Saga, claim: Claim, event: Event, changed: bool, inline: bool,
              retried: bool) -> None:
        held = self._started.pop(_key(claim), None) if inline else None
        if held is None:
            return  # `began` told nothing of it: no event is due
        task_id, began, hostname = held
        state = state_of(event, retried)
        text = _text(state, claim.attempt, event, changed)
        if state == SUCCESS or not changed:
            runtime = time.monotonic() - began
            outcome = ("task-succeeded", {"uuid": task_id, "result": repr(text), "runtime": runtime})
        else:
            outcome = ("task-retried" if state == RETRY else "task-failed",
                       {"uuid": task_id, "exception": repr(AttemptFailed(text)), "traceback": ""})
        self._hold(hostname, [outcome])

    def delivered(self) -> None:
        """The message's task is over: publish the events its inline attempts hold."""
        if self._held:
            self.flush()

    def flush(self) -> None:
        """Publish the held events, as one message."""
        try:
            with self._lock:
                if not self._held or self._dispatcher is None:
                    return
                self._held = 0
                self._dispatcher.flush(errors=False)
            self._sent()
        except Exception as exc:
            self._failed(exc)

    def _carrier(self, inline: bool) -> Any:
        """The request of the worker task running this attempt; None when no event is due."""
        if not inline:
            return None  # the message's own task reports its first attempt
        if self._enabled is None:
            self._enabled = bool(self.app.conf.worker_send_task_events)
        if not self._enabled:
            return None
        task = self.app.current_worker_task
        return task.request if task is not None else None

    def _hold(self, hostname: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            with self._lock:
                if self._dispatcher is None or self._pid != os.getpid():
                    self._open(hostname)
                for type_, fields in events:
                    self._dispatcher.send(type_, **fields)  # stamped now, held (buffer_group)
                if not self._held:
                    self._held_since = time.monotonic()
                self._held += len(events)
                full = self._held >= HELD_MAX
            if full:  # a long inline run: no message grows without bound
                self.flush()
        except Exception as exc:
            self._failed(exc)

    def _open(self, hostname: str) -> None:
        """This process's dispatcher (a forked child makes its own), and its flushing thread."""
        # Its own connection, unconfirmed (an event is worth no round trip).
        connection = self.app.connection_for_write(transport_options={"confirm_publish": False})
        self._dispatcher = self.app.events.Dispatcher(
            connection, hostname=hostname, buffer_while_offline=False,
            buffer_group={"task"}, buffer_limit=HELD_MAX * 2)  # flushed by us, never by it
        self._held = 0
        if self._pid != os.getpid():
            self._pid = os.getpid()
            threading.Thread(target=self._flush_late, args=(self._pid,),
                             name="saga-task-events", daemon=True).start()

    def _flush_late(self, pid: int) -> None:
        """Publish events held past `flush_after_s`: an attempt that runs on shows in time."""
        while self._pid == pid:
            time.sleep(self.flush_after_s)
            if self._held and time.monotonic() - self._held_since >= self.flush_after_s:
                self.flush()

    def _sent(self) -> None:
        self._failing = False
        count_event_messages(INLINE)

    def _failed(self, exc: Exception) -> None:
        self._reset()
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "could not send the task events of an inline attempt: %s", exc)

    def _reset(self) -> None:
        with self._lock:
            dispatcher, self._dispatcher, self._held = self._dispatcher, None, 0
        if dispatcher is not None:
            try:
                dispatcher.close()
                dispatcher.connection.release()
            except Exception:  # already broken: nothing more to free
                pass


def count_event_messages(kind: str) -> None:
    """Count one broker message of task events (saga_task_event_messages_total{kind}).

    Imported on use: saga.tasks loads before a command picks prometheus-client's mode.
    """
    from saga.observe.metrics import TASK_EVENT_MESSAGES

    TASK_EVENT_MESSAGES.labels(kind).inc()


def _key(claim: Claim) -> tuple[str, str, str, int]:
    return claim.run_id, claim.role, claim.step, claim.fence


def attempt_id(claim: Claim) -> str:
    """An inline attempt's task id: the same for the same claim (its fence is unique)."""
    return str(uuid.uuid5(_IDS, f"{claim.run_id}/{claim.role}/{claim.step}/{claim.fence}"))
