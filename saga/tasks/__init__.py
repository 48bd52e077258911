"""The Celery edge: `make_celery(settings)`, the two step tasks, and the Celery dispatcher.

Messages carry ids only (run, step, saga, version), so Flower shows what each task is
about and a lost or doubled message can never lose or double an effect: the saga log
decides. Settings follow RELIABILITY.md: JSON only, late acks, prefetch 1, no results.

Each deployment (one database) has its own queue, `saga.<deployment id>` unless SAGA_QUEUE
names one, and stamps its id on every message: a worker hands another deployment's back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded  # noqa: F401  (raised inside steps)

from saga.events import Command
from saga.run import Role
from saga.settings import Settings

if TYPE_CHECKING:
    from saga.definitions import RemoteTask, Saga
    from saga.engine import Engine

STEP_TASK = "saga.step"
COMPENSATE_TASK = "saga.compensate"
HARD_LIMIT_GRACE_S = 5.0  # the hard limit kills a step this long after its soft limit
DEPLOYMENT_HEADER = "saga_deployment"  # a header: workers of older versions ignore it
HAND_BACKS_HEADER = "saga_hand_backs"
# Then a foreign message is dropped for its own sweeper: bounded work here even while the
# other deployment has no worker running.
MAX_HAND_BACKS = 20
IN_PROCESS_QUEUE = "saga"  # the in-memory broker is one process's own: no namespace needed

log = logging.getLogger(__name__)


def queue_for(deployment_id: str) -> str:
    """A deployment's default queue: one per database, with no setting."""
    return f"saga.{deployment_id}"


class Namespace:
    """The deployment this process serves and its queue, read from the database on first use.

    Read once and kept (a failure is not kept: the next use reads again). Lazily, so a
    process that never publishes never asks, and the embedded stack can migrate first.
    """

    def __init__(self, settings: Settings, read_id: Callable[[], str]) -> None:
        self._settings = settings
        self._read_id = read_id

    @cached_property
    def id(self) -> str | None:
        """This deployment's id; None on the in-memory broker, which no other process shares."""
        if self._settings.broker_url.startswith("memory"):
            return None
        return self._read_id()

    @cached_property
    def queue(self) -> str:
        explicit = self._settings.explicit_queue
        if explicit:
            return explicit
        return IN_PROCESS_QUEUE if self.id is None else queue_for(self.id)


def make_celery(settings: Settings, engine: Callable[[], Engine] | None = None,
                namespace: Namespace | None = None) -> Celery:
    """A Celery app for the saga tasks; `engine` builds the worker's engine (lazily, per process).

    With `namespace`, its tasks hand back messages stamped by another deployment.
    """
    app = Celery("saga", broker=settings.broker_url, set_as_current=False)
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith(("amqp", "pyamqp")):
        transport_options["confirm_publish"] = True  # a publish that is not confirmed raises
    elif settings.broker_url.startswith(("redis", "rediss")):
        # Unacknowledged messages come back after this; it must outlast every hard limit.
        transport_options["visibility_timeout"] = settings.visibility_timeout_s
    elif settings.broker_url.startswith("memory"):
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
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_backend=settings.result_backend or None,
    )
    holder: dict[str, Engine] = {}

    def current() -> Engine:
        if "engine" not in holder:
            if engine is None:
                raise RuntimeError("this Celery app was made without an engine factory")
            holder["engine"] = engine()
        return holder["engine"]

    @app.task(name=STEP_TASK, bind=True, shared=False)  # this app only, never another
    def step(self: Any, run_id: str, step: str, saga: str, version: int) -> str:
        if foreign(self.request, namespace):
            return hand_back(app, self.request, namespace)
        return current().run_step(run_id, step, Role.FORWARD, saga, version,
                                  worker=f"{self.request.hostname}/{os.getpid()}").outcome

    @app.task(name=COMPENSATE_TASK, bind=True, shared=False)
    def compensate(self: Any, run_id: str, step: str, saga: str, version: int) -> str:
        if foreign(self.request, namespace):
            return hand_back(app, self.request, namespace)
        return current().run_step(run_id, step, Role.COMPENSATE, saga, version,
                                  worker=f"{self.request.hostname}/{os.getpid()}").outcome

    return app


_warned: set[str] = set()  # other deployments already named in this process's log


def foreign(request: Any, namespace: Namespace | None) -> bool:
    """Whether another deployment published this message (a queue name both were given)."""
    sender = request.get(DEPLOYMENT_HEADER)  # None from versions before the stamp
    mine = namespace.id if namespace is not None else None
    return sender is not None and mine is not None and sender != mine


def hand_back(app: Celery, request: Any, namespace: Namespace) -> str:
    """Put another deployment's message back on the queue, for its own workers; acked here.

    A requeue (reject) would return it to the head of the queue and could loop forever
    here; a copy at the tail, counted, cannot: after MAX_HAND_BACKS it is dropped, and its
    deployment's sweeper publishes the step again (SAGA_REDISPATCH_S). Nothing is lost.
    """
    sender = request.get(DEPLOYMENT_HEADER)
    level = logging.DEBUG if sender in _warned else logging.WARNING
    _warned.add(sender)
    log.log(level, "handed back a message of deployment %s on queue %r: this worker serves "
            "deployment %s, another database. Two deployments share this queue because "
            "SAGA_QUEUE (or SAGA_DEFAULT_QUEUE) names it for both: give each its own, or unset "
            "it for a queue per database. Their runs are slowed, not lost.",
            sender, namespace.queue, namespace.id)
    hops = int(request.get(HAND_BACKS_HEADER) or 0)
    if hops >= MAX_HAND_BACKS:
        return "dropped"
    hard, soft = request.timelimit or (None, None)
    app.send_task(request.task, args=request.args, kwargs=request.kwargs, queue=namespace.queue,
                  headers={DEPLOYMENT_HEADER: sender, HAND_BACKS_HEADER: hops + 1},
                  time_limit=hard, soft_time_limit=soft)
    return "handed back"


def prepare_worker(app: Celery, namespace: Namespace) -> str:
    """The queue a worker consumes, set as the app's default; on Redis, this deployment's
    own unacked-message keys, so its SAGA_VISIBILITY_TIMEOUT_S alone decides when its
    unacknowledged messages come back (kombu's default keys are shared by every app on
    that Redis database, and the shortest timeout among them would win).
    """
    queue = namespace.queue
    app.conf.task_default_queue = queue
    if app.conf.broker_url.startswith(("redis", "rediss")):
        app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                             **redis_unacked_keys(queue)}
    return queue


def redis_unacked_keys(queue: str) -> dict[str, str]:
    """Kombu's Redis transport options naming where a worker on `queue` keeps unacked messages."""
    return {"unacked_key": f"{queue}.unacked", "unacked_index_key": f"{queue}.unacked_index",
            "unacked_mutex_key": f"{queue}.unacked_mutex"}


def broker_limit_problems(settings: Settings, sagas: Iterable[Saga]) -> list[str]:
    """Steps whose hard time limit outlasts the broker's redelivery limit (refuse to start).

    Past Redis's visibility timeout the message is delivered again while the step still
    runs; past RabbitMQ's consumer_timeout the broker closes the channel.
    """
    if settings.broker_url.startswith(("redis", "rediss")):
        limit, what = settings.visibility_timeout_s, "the Redis visibility_timeout (SAGA_VISIBILITY_TIMEOUT_S)"
    elif settings.broker_url.startswith(("amqp", "pyamqp")):
        limit, what = settings.consumer_timeout_s, "RabbitMQ's consumer_timeout (SAGA_CONSUMER_TIMEOUT_S)"
    else:
        return []
    problems = []
    for saga in sagas:
        for step in saga.by_name.values():
            if step.timeout is None:
                continue
            hard = step.timeout.total_seconds() + HARD_LIMIT_GRACE_S
            if hard >= limit:
                problems.append(f"saga {saga.name!r} v{saga.version} step {step.name!r}: hard "
                                f"time limit {hard:.0f}s is not below {what} of {limit}s")
    return problems


class CeleryDispatcher:
    """Publishes step hints through Celery to this deployment's queue, stamped with its id;
    also calls RemoteTask steps and waits."""

    def __init__(self, app: Celery, namespace: Namespace) -> None:
        self.app = app
        self.namespace = namespace

    @property
    def queue(self) -> str:
        return self.namespace.queue

    def send(self, run_id: str, saga: str, version: int, commands: list[Command],
             timeouts: dict[str, float | None]) -> None:
        for command in commands:
            name = STEP_TASK if command.role is Role.FORWARD else COMPENSATE_TASK
            limit = timeouts.get(command.step) if command.role is Role.FORWARD else None
            options: dict[str, Any] = {}
            if limit:
                options = {"soft_time_limit": limit, "time_limit": limit + HARD_LIMIT_GRACE_S}
            if self.namespace.id is not None:
                options["headers"] = {DEPLOYMENT_HEADER: self.namespace.id}
            self.app.send_task(name, args=[run_id, command.step, saga, version],
                               queue=self.queue, **options)

    def call_remote(self, task: RemoteTask, payload: dict[str, Any], timeout: float | None) -> Any:
        result = self.app.send_task(task.name, args=[payload], queue=task.queue,
                                    ignore_result=False)
        return result.get(timeout=timeout, disable_sync_subtasks=False)

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
