"""One queue per deployment, and the messages of another deployment handed back.

Each deployment (one database) has its own queue, `saga.<deployment id>` unless SAGA_QUEUE
names one, and stamps its id on every message: a worker hands another deployment's back.
Its task events and remote control have their own exchanges too, so Flower and `celery
inspect` on one deployment see its workers and tasks alone.

On RabbitMQ the step queue is of SAGA_QUEUE_TYPE (classic, or quorum: replicated), declared
alike by every process that publishes or consumes it; one whose broker queue is of the other
type is told so (QueueMismatch), once, not as a channel error on every publish.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from amqp.exceptions import PreconditionFailed  # type: ignore[import-untyped]
from celery import Celery
from kombu import Exchange, Queue

from saga.settings import Settings

DEPLOYMENT_HEADER = "saga_deployment"  # a header: workers of older versions ignore it
HAND_BACKS_HEADER = "saga_hand_backs"
# Then a foreign message is dropped for its own sweeper: bounded work here even while the
# other deployment has no worker running.
MAX_HAND_BACKS = 20
IN_PROCESS_QUEUE = "saga"  # the in-memory broker is one process's own: no namespace needed

log = logging.getLogger("saga.tasks")


def queue_for(deployment_id: str) -> str:
    """A deployment's default queue: one per database, with no setting."""
    return f"saga.{deployment_id}"


def exchanges_for(deployment_id: str) -> dict[str, str]:
    """Celery's event and control exchanges for one deployment (Celery's own are shared by
    every app on the broker: `celeryev`, and `celery` for remote control)."""
    return {"event_exchange": f"saga.{deployment_id}.events",
            "control_exchange": f"saga.{deployment_id}"}


def use_exchanges(app: Celery, namespace: Namespace, wait: bool = False) -> None:
    """Give `app` this deployment's event and control exchanges, and on RabbitMQ its step
    queue of SAGA_QUEUE_TYPE; before its first publish, event or remote-control call (Celery
    reads them once). None on the in-memory broker.

    The first call in a process checks the broker's queue (`wait`: for the broker to answer).
    """
    if namespace.id is None:
        return
    wanted = exchanges_for(namespace.id)
    if app.conf.event_exchange != wanted["event_exchange"]:
        app.conf.update(wanted)
    if app.conf.broker_url.startswith(("amqp", "pyamqp")):
        use_step_queue(app, namespace, wait)


class QueueMismatch(Exception):
    """The broker has the step queue declared otherwise: most likely of another type than
    SAGA_QUEUE_TYPE asks for."""


def step_queue(name: str, queue_type: str) -> Queue:
    """The step queue as every process of a deployment declares it: durable, bound to a
    direct exchange of its name (as Celery makes a queue it is only named), and of
    `queue_type`. A classic queue has no arguments, as before the setting existed."""
    arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
    return Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True,
                 queue_arguments=arguments)


def use_step_queue(app: Celery, namespace: Namespace, wait: bool = False) -> None:
    """Make Celery declare this deployment's queue as `step_queue` says, wherever it
    publishes to or consumes it (RabbitMQ refuses a declaration that disagrees with the
    queue's); check the broker's once per process.

    Only this queue: Celery's reply and pidbox queues (auto-delete) and RemoteTask queues
    (another service's) stay as they are.
    """
    queue = step_queue(namespace.queue, namespace.queue_type)
    queues = app.amqp.queues
    if dict.get(queues, queue.name) != queue:  # dict.get: Celery's `[]` adds a classic one
        queues.add(queue)
    if not namespace.queue_checked:
        check_step_queue(app, queue, namespace.queue_type, wait)
        namespace.queue_checked = True


def check_step_queue(app: Celery, queue: Queue, queue_type: str, wait: bool = False) -> None:
    """Declare `queue` on the broker (creating it if missing); QueueMismatch if the
    broker has it with another type. `wait`: retry while the broker does not answer, as a
    starting worker does."""
    with app.connection_for_write() as connection:
        if wait:
            connection.ensure_connection(errback=_cannot_connect(connection),
                                         max_retries=app.conf.broker_connection_max_retries)
        channel = connection.channel()  # its own: the broker closes it on a mismatch
        try:
            queue(channel).declare()
        except PreconditionFailed as exc:
            raise QueueMismatch(mismatch(queue.name, queue_type, exc)) from None
        finally:
            channel.close()


def _cannot_connect(connection: Any) -> Callable[[Exception, float], None]:
    """Said on each failed try, as Celery's consumer says it (the password masked)."""
    def said(exc: Exception, interval: float) -> None:
        log.error("Cannot connect to %s: %s. Trying again in %.2f seconds...",
                  connection.as_uri(), exc, interval)
    return said


def mismatch(name: str, queue_type: str, exc: Exception) -> str:
    """What to do about a queue RabbitMQ has declared otherwise (it cannot be changed)."""
    if "x-queue-type" in str(exc):
        other = "classic" if queue_type == "quorum" else "quorum"
        what = (f"the broker's queue {name!r} is not a {queue_type} queue, and "
                f"SAGA_QUEUE_TYPE={queue_type} asks for one (RabbitMQ: {exc}). A queue's type "
                f"cannot change. Either set SAGA_QUEUE_TYPE={other} as the queue is, or")
    else:  # declared by something other than a saga process: the same way out
        what = (f"the broker has queue {name!r} declared otherwise than this deployment "
                f"declares it (RabbitMQ: {exc}). Either")
    return (f"{what} give SAGA_QUEUE a new name in every process of this deployment, or stop "
            f"them all and delete the queue (rabbitmqctl delete_queue {name}). Nothing is "
            "lost: the sweeper republishes every queued step within SAGA_REDISPATCH_S, so the "
            "old queue's messages can go")


class Namespace:
    """The deployment this process serves and its queue, read from the database on first use.

    Read once and kept (a failure is not kept: the next use reads again). Lazily, so a
    process that never publishes never asks, and the embedded stack can migrate first.
    """

    def __init__(self, settings: Settings, read_id: Callable[[], str]) -> None:
        self._settings = settings
        self._read_id = read_id
        self.queue_type = settings.queue_type
        self.queue_checked = False  # the broker's queue found of queue_type (RabbitMQ)

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
                  time_limit=hard, soft_time_limit=soft, shadow=request.shadow)
    return "handed back"


def prepare_worker(app: Celery, namespace: Namespace) -> str:
    """The queue a worker consumes, set as the app's default and, on RabbitMQ, checked to
    be of SAGA_QUEUE_TYPE (QueueMismatch if not); on Redis, this deployment's
    own unacked-message keys, so its SAGA_VISIBILITY_TIMEOUT_S alone decides when its
    unacknowledged messages come back (kombu's default keys are shared by every app on
    that Redis database, and the shortest timeout among them would win).
    """
    queue = namespace.queue
    app.conf.task_default_queue = queue
    use_exchanges(app, namespace, wait=True)  # QueueMismatch before the worker starts
    if app.conf.broker_url.startswith(("redis", "rediss")):
        app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                             **redis_unacked_keys(queue)}
    return queue


def redis_unacked_keys(queue: str) -> dict[str, str]:
    """Kombu's Redis transport options naming where a worker on `queue` keeps unacked messages."""
    return {"unacked_key": f"{queue}.unacked", "unacked_index_key": f"{queue}.unacked_index",
            "unacked_mutex_key": f"{queue}.unacked_mutex"}
