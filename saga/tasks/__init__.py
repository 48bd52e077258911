"""The Celery edge, the only package that imports Celery.

`app` makes the Celery app and its two step tasks; `dispatcher` publishes step hints;
`namespace` gives each deployment its own queue and event exchanges; `attempts` shows each
attempt in Flower as a task (with its real outcome), inline ones too; `flower` runs Flower
on this deployment; `limits` checks time limits against the broker's redelivery limit.
"""

from celery.exceptions import SoftTimeLimitExceeded  # noqa: F401  (raised inside steps)

from saga.tasks.app import TASKS, make_celery
from saga.tasks.attempts import AttemptFailed, InlineEvents, task_name
from saga.tasks.dispatcher import CeleryDispatcher
from saga.tasks.limits import HARD_LIMIT_GRACE_S, broker_limit_problems
from saga.tasks.namespace import (
    Namespace,
    exchanges_for,
    prepare_worker,
    queue_for,
    redis_unacked_keys,
    use_exchanges,
)

__all__ = ["make_celery", "TASKS", "CeleryDispatcher", "Namespace", "prepare_worker",
           "queue_for", "redis_unacked_keys", "broker_limit_problems", "HARD_LIMIT_GRACE_S",
           "AttemptFailed", "InlineEvents", "task_name", "exchanges_for", "use_exchanges"]
