"""Which started steps to compensate, and when: reverse order of completion; pure.

A step is compensated once its forward attempt has settled (never while it may still
run) and every step that came after it in the graph is done: compensated, or never
started, or with nothing to undo. Members of a parallel group do not wait for each
other, so they are compensated in parallel; a sequence is undone back to front.
"""

from __future__ import annotations

from collections.abc import Mapping

from saga.definitions import Saga
from saga.run import Role, StepKey, StepState, StepStatus


def needs_compensation(saga: Saga, steps: Mapping[StepKey, StepState], name: str) -> bool:
    """Whether the step has a compensation and started, so may have had an effect.

    One that did not succeed is compensated unless its `compensate_failed` is False and
    each of its attempts ended knowing it had no effect (none is in doubt). Whether one
    with a `verify` check took effect is asked when its compensation runs.
    """
    forward = steps.get((name, Role.FORWARD))
    definition = saga.by_name[name]
    if forward is None or definition.compensate is None:
        return False
    # started_at is set when a worker claims the step: one that only timed out in the
    # queue never ran, so there is nothing to undo.
    if forward.started_at is None or forward.status.active:
        return False
    return (forward.status is StepStatus.SUCCEEDED or definition.compensate_failed
            or forward.in_doubt)


def ready(saga: Saga, steps: Mapping[StepKey, StepState]) -> list[str]:
    """Steps whose compensation may start now, latest in the graph first."""
    done = _done_table(saga, steps)
    return [name for name in reversed(saga.order)
            if needs_compensation(saga, steps, name)
            and (name, Role.COMPENSATE) not in steps
            and all(done[s] for s in saga.successors(name))]


def finished(saga: Saga, steps: Mapping[StepKey, StepState]) -> bool:
    """Whether every started step is settled and every needed compensation succeeded."""
    done = _done_table(saga, steps)
    return all(done.values())


def _done_table(saga: Saga, steps: Mapping[StepKey, StepState]) -> dict[str, bool]:
    done: dict[str, bool] = {}
    for name in reversed(saga.order):  # successors come first in this order
        forward = steps.get((name, Role.FORWARD))
        settled = forward is None or not forward.status.active
        undo = steps.get((name, Role.COMPENSATE))
        undone = (not needs_compensation(saga, steps, name)
                  or (undo is not None and undo.status is StepStatus.SUCCEEDED))
        done[name] = settled and undone and all(done[s] for s in saga.successors(name))
    return done
