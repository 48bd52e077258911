"""Refuse to start a worker whose steps' time limits outlast the broker's redelivery limit."""

from __future__ import annotations

from collections.abc import Iterable

from saga.definitions import Saga
from saga.settings import Settings

HARD_LIMIT_GRACE_S = 5.0  # the hard limit kills a step this long after its soft limit
# Of the broker's redelivery limit, the share a worker spends running steps inline from one
# message; the rest is left to the last step it took on, whose length no limit bounds.
INLINE_SHARE = 0.5


def redelivery_limit(settings: Settings) -> tuple[float, str] | None:
    """How long the broker lets a delivered message go unacknowledged, and its setting;
    None for the in-process broker, which has no such limit."""
    if settings.broker_url.startswith(("redis", "rediss")):
        return settings.visibility_timeout_s, "the Redis visibility_timeout (SAGA_VISIBILITY_TIMEOUT_S)"
    if settings.broker_url.startswith(("amqp", "pyamqp")):
        return settings.consumer_timeout_s, "RabbitMQ's consumer_timeout (SAGA_CONSUMER_TIMEOUT_S)"
    return None


def inline_window_s(settings: Settings) -> float | None:
    """How long a worker takes steps on inline after a message arrives (None: no bound).

    The message stays unacknowledged until the last inline step is done, and only steps
    without a time limit run inline, so nothing else bounds the sum: past the window the
    next step is published instead, a message with a redelivery limit of its own.
    """
    limit = redelivery_limit(settings)
    return None if limit is None else limit[0] * INLINE_SHARE


def broker_limit_problems(settings: Settings, sagas: Iterable[Saga]) -> list[str]:
    """Steps whose hard time limit outlasts the broker's redelivery limit (refuse to start).

    Past Redis's visibility timeout the message is delivered again while the step still
    runs; past RabbitMQ's consumer_timeout the broker closes the channel, and the worker
    then kills the step (worker_cancel_long_running_tasks_on_connection_loss). A step with
    a time limit never runs inline (Engine._claim_queued): its message holds it alone.
    """
    found = redelivery_limit(settings)
    if found is None:
        return []
    limit, what = found
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
