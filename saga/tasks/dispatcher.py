"""The Celery dispatcher: publishes "run step S of run R" hints, and calls RemoteTask steps.

Messages carry ids only (run, step, saga, version), so a lost or doubled message can
never lose or double an effect: the saga log decides. Each is named for Flower after its
saga and step (Celery's `shadow`), its ids as keyword arguments.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from saga.definitions import RemoteTask
from saga.events import Dispatch
from saga.run import Role
from saga.tasks.app import TASKS
from saga.tasks.attempts import task_name
from saga.tasks.limits import HARD_LIMIT_GRACE_S
from saga.tasks.namespace import DEPLOYMENT_HEADER, Namespace, use_exchanges


class CeleryDispatcher:
    """Publishes step hints through Celery to this deployment's queue, stamped with its id;
    also calls RemoteTask steps and waits."""

    def __init__(self, app: Celery, namespace: Namespace) -> None:
        self.app = app
        self.namespace = namespace

    @property
    def queue(self) -> str:
        return self.namespace.queue

    def send(self, run_id: str, saga: str, version: int, commands: list[Dispatch],
             timeouts: dict[str, float | None]) -> None:
        use_exchanges(self.app, self.namespace)  # this deployment's task events, before the first
        for command in commands:
            name = TASKS[command.role]
            limit = timeouts.get(command.step) if command.role is Role.FORWARD else None
            options: dict[str, Any] = {}
            if limit:
                options = {"soft_time_limit": limit, "time_limit": limit + HARD_LIMIT_GRACE_S}
            if self.namespace.id is not None:
                options["headers"] = {DEPLOYMENT_HEADER: self.namespace.id}
            self.app.send_task(name, kwargs={"run_id": run_id, "saga": saga, "version": version,
                                             "step": command.step},
                               shadow=task_name(saga, command.step, command.role),
                               queue=self.queue, **options)

    def call_remote(self, task: RemoteTask, payload: dict[str, Any], timeout: float | None) -> Any:
        use_exchanges(self.app, self.namespace)
        result = self.app.send_task(task.name, args=[payload], queue=task.queue,
                                    ignore_result=False)
        return result.get(timeout=timeout, disable_sync_subtasks=False)

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
