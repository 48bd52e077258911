"""`make_celery(settings)`: the Celery app, configured for the saga log, and its two step tasks.

Settings follow what breaks Celery-based orchestration: JSON only, late acks, prefetch 1,
no results (PostgreSQL is the result store), publisher confirms on RabbitMQ; task events
on (SAGA_TASK_EVENTS), so Flower shows every attempt as it happens.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import worker_process_shutdown

from saga.run import Role
from saga.settings import Settings
from saga.tasks.attempts import AttemptFailed, finish
from saga.tasks.namespace import IN_PROCESS_QUEUE, Namespace, foreign, hand_back

if TYPE_CHECKING:
    from saga.worker.runner import Worker

# The task for each role. Flower lists each message by its step instead (`shadow`, set by
# CeleryDispatcher): `order_fulfillment.charge_card`, `order_fulfillment.charge_card.compensate`.
TASKS = {Role.FORWARD: "saga.step", Role.COMPENSATE: "saga.compensate"}


def make_celery(settings: Settings, worker: Callable[[], Worker] | None = None,
                namespace: Namespace | None = None) -> Celery:
    """A Celery app for the saga tasks; `worker` gives the process's Worker (asked lazily).

    With `namespace`, its tasks hand back messages stamped by another deployment.
    """
    app = Celery("saga", broker=settings.broker_url, set_as_current=False)
    in_process = settings.broker_url.startswith("memory")
    transport_options: dict[str, Any] = {}
    quorum: dict[str, Any] = {}
    if settings.broker_url.startswith(("amqp", "pyamqp")):
        transport_options["confirm_publish"] = True  # a publish that is not confirmed raises
        # Its task events unconfirmed (see saga.tasks.consumer); step messages stay confirmed.
        quorum = {"worker_consumer": "saga.tasks.consumer:StepConsumer"}
        if settings.queue_type == "quorum":
            # The step queue itself is declared by `use_step_queue`; the worker turns global
            # QoS off for it (worker_detect_quorum_queues, on by default).
            quorum["task_default_queue_type"] = "quorum"
    elif settings.broker_url.startswith(("redis", "rediss")):
        # Unacknowledged messages come back after this; it must outlast every hard limit.
        transport_options["visibility_timeout"] = settings.visibility_timeout_s
    elif in_process:
        transport_options["polling_interval"] = 0.01  # the in-process broker polls; keep it brisk
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # safe: the claim caps attempts in PostgreSQL
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_ignore_result=True,
        # Step messages name their queue (CeleryDispatcher); `prepare_worker` sets the
        # derived one here too, before a worker consumes.
        task_default_queue=settings.explicit_queue or IN_PROCESS_QUEUE,
        broker_transport_options=transport_options,
        # Task events for Flower, from workers; and from every publisher, "task-sent", which
        # CeleryDispatcher sends itself, before the message. No one could watch the
        # in-memory broker's.
        worker_send_task_events=settings.task_events == "on" and not in_process,
        task_send_sent_event=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_backend=settings.result_backend or None,
        **quorum,
    )

    def run(task: Any, role: Role, run_id: str, step: str, saga: str, version: int) -> str:
        if namespace is not None and foreign(task.request, namespace):
            return hand_back(app, task.request, namespace)
        if worker is None:
            raise RuntimeError("this Celery app was made without a worker")
        running = worker()
        result = running.run_step(run_id, step, role, saga, version,
                                  worker=f"{task.request.hostname}/{os.getpid()}")
        if result.event is None:
            return result.outcome  # no attempt ran here: "dropped", "deferred"
        # The attempt it ran, as its task's state: SUCCESS, or raised as FAILURE or RETRY.
        return finish(result)

    # Shared by no other app; a failed attempt is expected (INFO, no traceback: the saga log
    # and the worker's own line hold the error).
    @app.task(name=TASKS[Role.FORWARD], bind=True, shared=False, throws=(AttemptFailed,))
    def step(self: Any, run_id: str, step: str, saga: str, version: int) -> str:
        return run(self, Role.FORWARD, run_id, step, saga, version)

    @app.task(name=TASKS[Role.COMPENSATE], bind=True, shared=False, throws=(AttemptFailed,))
    def compensate(self: Any, run_id: str, step: str, saga: str, version: int) -> str:
        return run(self, Role.COMPENSATE, run_id, step, saga, version)

    if worker is not None and settings.otel == "on":
        # Pool children end with os._exit: hand over what observers batch (spans) first.
        def flush(**_: Any) -> None:
            observer = worker().engine.observer
            close = getattr(observer, "close", None)
            if callable(close):
                close()

        worker_process_shutdown.connect(flush, weak=False)
    return app
