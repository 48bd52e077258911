"""Refuse to start a worker whose steps' time limits outlast the broker's redelivery limit."""

from __future__ import annotations

from collections.abc import Iterable

from saga.definitions import Saga
from saga.settings import Settings

HARD_LIMIT_GRACE_S = 5.0  # the hard limit kills a step this long after its soft limit


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
