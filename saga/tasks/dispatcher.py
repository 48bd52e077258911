"""The Celery dispatcher: publishes "run step S of run R" hints, and calls RemoteTask steps.

Messages carry ids only (run, step, saga, version), so a lost or doubled message can
never lose or double an effect: the saga log decides. Each is named for Flower after its
saga and step (Celery's `shadow`), its ids as keyword arguments, and announced to Flower by
a "task-sent" event sent before it (Celery's own comes after the message, so a worker's
events can overtake it, and Flower would then rename the task and turn RETRY to PENDING).
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from celery import Celery

from saga.definitions import RemoteTask
from saga.events import Dispatch
from saga.run import Role
from saga.tasks.app import TASKS
from saga.tasks.attempts import count_event_messages, task_name
from saga.tasks.limits import HARD_LIMIT_GRACE_S
from saga.tasks.namespace import DEPLOYMENT_HEADER, Namespace, use_exchanges

log = logging.getLogger("saga.tasks")
SENT = "sent"  # saga_task_event_messages_total{kind}: a step message's task-sent event


class CeleryDispatcher:
    """Publishes step hints through Celery to this deployment's queue, stamped with its id;
    also calls RemoteTask steps and waits."""

    def __init__(self, app: Celery, namespace: Namespace) -> None:
        self.app = app
        self.namespace = namespace
        self._local = threading.local()

    @property
    def queue(self) -> str:
        return self.namespace.queue

    def send(self, run_id: str, saga: str, version: int, commands: list[Dispatch],
             timeouts: dict[str, float | None]) -> None:
        use_exchanges(self.app, self.namespace)  # this deployment's, before the first publish
        with self.app.producer_or_acquire() as producer:
            for command in commands:
                limit = timeouts.get(command.step) if command.role is Role.FORWARD else None
                options: dict[str, Any] = {}
                if limit:
                    options = {"soft_time_limit": limit, "time_limit": limit + HARD_LIMIT_GRACE_S}
                if self.namespace.id is not None:
                    options["headers"] = {DEPLOYMENT_HEADER: self.namespace.id}
                task_id, shadow = str(uuid.uuid4()), task_name(saga, command.step, command.role)
                kwargs = {"run_id": run_id, "saga": saga, "version": version, "step": command.step}
                self._announce(producer, task_id, shadow, kwargs)
                self.app.send_task(TASKS[command.role], kwargs=kwargs, task_id=task_id,
                                   shadow=shadow, queue=self.queue, producer=producer, **options)
                count_published(command.role)

    def _announce(self, producer: Any, task_id: str, name: str, kwargs: dict[str, Any]) -> None:
        """Send a message's "task-sent" event, with task events on; routed (confirmed, on
        RabbitMQ) before the message exists. Best effort: a lost event costs Flower the
        task's queued state, never the message."""
        if not self.app.conf.worker_send_task_events:
            return
        try:
            events = getattr(self._local, "events", None)
            if events is None:  # one per thread: a dispatcher serialises its publishes
                events = self._local.events = self.app.events.Dispatcher(
                    enabled=False, buffer_while_offline=False)  # publishes on `producer`
            events.publish("task-sent", {
                "uuid": task_id, "name": name, "args": "()", "kwargs": repr(kwargs),
                "retries": 0, "eta": None, "expires": None, "queue": self.queue,
                "exchange": "", "routing_key": self.queue, "root_id": task_id,
                "parent_id": None}, producer, retry=True,
                retry_policy=self.app.conf.task_publish_retry_policy)
            count_event_messages(SENT)
        except Exception as exc:
            log.debug("the task-sent event of %s was not sent: %s", task_id, exc)

    def call_remote(self, task: RemoteTask, payload: dict[str, Any], timeout: float | None) -> Any:
        use_exchanges(self.app, self.namespace)
        result = self.app.send_task(task.name, args=[payload], queue=task.queue,
                                    ignore_result=False)
        return result.get(timeout=timeout, disable_sync_subtasks=False)

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)


def count_published(role: Role) -> None:
    """Count one step message (saga_messages_published_total{role}).

    Imported on use: saga.tasks loads before a command picks prometheus-client's mode.
    """
    from saga.observe.metrics import MESSAGES_PUBLISHED

    MESSAGES_PUBLISHED.labels(role.value).inc()
