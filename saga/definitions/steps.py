"""One step: its action, compensation, retry policies and time limits; checked when built."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Union

from saga.definitions.retry import DEFAULT_COMPENSATE_RETRY, Retry
from saga.definitions.waits import OnSignalTimeout, Signal, Timer
from saga.errors import DefinitionError
from saga.run import Checked


@dataclass(frozen=True)
class RemoteTask:
    """A Celery task that another service's worker runs, by name (and queue)."""

    name: str
    queue: str | None = None


Action = Union[Callable[..., Any], RemoteTask, str]

class OnTimeout(StrEnum):
    """What a timed-out attempt of a step leads to."""

    RETRY = "retry"  # another attempt, by the step's retry policy
    COMPENSATE = "compensate"  # the step fails now, and the run compensates
    PARK = "park"  # stop and flag the run for a person


TIMEOUT_POLICIES = tuple(OnTimeout)


@dataclass(frozen=True)
class Verified:
    """A step's `verify` answer about an earlier attempt whose outcome is unknown.

        def charged(ctx):
            charge = payments.find(key=ctx.idempotency_key)  # the forward call's key
            if charge is None:
                return Verified.not_done()
            return Verified.done({"charge_id": charge["id"]})
    """

    answer: Checked
    output: Any = None  # with done: the step's output, as the action would have returned it

    def __post_init__(self) -> None:
        object.__setattr__(self, "answer", Checked(self.answer))  # "done" names the member

    @classmethod
    def done(cls, output: Any = None) -> Verified:
        """It took effect: record `output` as the step's, and do not call the action again."""
        return cls(Checked.DONE, output)

    @classmethod
    def not_done(cls) -> Verified:
        """It had no effect: call the action again (or, compensating, skip the undo)."""
        return cls(Checked.NOT_DONE)

    @classmethod
    def unknown(cls) -> Verified:
        """No one can tell: park the run for a person rather than risk doing it twice."""
        return cls(Checked.UNKNOWN)


@dataclass(frozen=True)
class Step:
    """One step: an action, its optional compensation, how to retry it, its time limits.

    An action is a callable taking a `saga.StepContext`, a `"module:function"` import
    path, or a `RemoteTask`. `after` adds dependencies beyond the step's place in its
    sequence. Time limits, each measuring one thing:

    - `timeout` (start to close): the soft limit raises inside the step, and the hard
      limit (a few seconds later) kills it.
    - `heartbeat_timeout`: the lease; without a heartbeat within it the attempt failed.
    - `schedule_to_start`: queued longer than this without a worker taking it.

    `on_timeout` says what a timed-out attempt leads to: "retry" (by `retry`),
    "compensate" (fail the step now), or "park" (stop and flag the run for a person).

    Three options decide what a failure may undo:

    - `compensate_failed` (default True): a step whose forward action failed for good is
      compensated too, since a call that raised may still have had its effect. False
      says a raised failure never has one; an attempt that timed out or whose worker
      died is still compensated, since no one knows what it did.
    - `pivot`: the point of no return. Until it succeeds a failure compensates as usual;
      once it has, nothing is compensated and the run cannot be cancelled: later steps
      are retried, and one that cannot succeed parks the run for a person.
    - `verify`: `check(ctx) -> Verified`, called before acting again after an attempt
      whose outcome is unknown (a worker died, a time limit hit), and before compensating
      a step that did not succeed. Done records its output without calling the action,
      not done calls it (or skips the undo), unknown parks the run for a person.
    """

    name: str
    action: Action | None
    compensate: Action | None = None
    retry: Retry = Retry()
    compensate_retry: Retry = DEFAULT_COMPENSATE_RETRY
    timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    schedule_to_start: timedelta | None = None
    on_timeout: OnTimeout | str = OnTimeout.RETRY
    after: tuple[str, ...] = ()
    queue: str | None = None
    wait: Timer | Signal | None = None  # set by Wait / WaitForSignal: a step that holds no worker
    compensate_failed: bool = True
    pivot: bool = False
    verify: Callable[..., Verified] | str | None = None

    def __post_init__(self) -> None:
        # A string names the member ("park"); a wrong one is refused, naming the saga, later.
        if self.on_timeout in TIMEOUT_POLICIES:
            object.__setattr__(self, "on_timeout", OnTimeout(self.on_timeout))

    def for_role(self, role: str) -> tuple[Action | None, Retry]:
        """The action and retry policy of this step's forward action or its compensation."""
        if role == "compensate":
            return self.compensate, self.compensate_retry
        return self.action, self.retry


def Wait(name: str, duration: timedelta | None = None,
         until: Callable[[Any, dict[str, Any]], Any] | None = None,
         after: tuple[str, ...] = ()) -> Step:
    """A durable timer step: "wait 20 minutes", or until a time computed from the run.

    The wait is a row with a due time: a waiting run holds no worker and no message.

        Wait("cool_off", duration=timedelta(minutes=20))
        Wait("trial_over", until=lambda input, outputs: parse(input["trial_ends_at"]))
    """
    return Step(name, None, wait=Timer(duration, until), after=after)


def WaitForSignal(name: str, signal: str | None = None, timeout: timedelta | None = None,
                  on_timeout: OnSignalTimeout | str = OnSignalTimeout.COMPENSATE,
                  schema: Any = None,
                  after: tuple[str, ...] = ()) -> Step:
    """A step that waits for `POST /v1/runs/{id}/signals/{signal}` (the step's name by default).

        WaitForSignal("shipping_label", timeout=timedelta(days=2), schema=LabelSchema)
    """
    return Step(name, None, wait=Signal(signal or name, timeout, on_timeout, schema), after=after)


def _check_step(step: Step) -> None:
    if not isinstance(step.name, str) or not step.name.isidentifier():
        raise DefinitionError(f"step name {step.name!r} must be an identifier")
    if isinstance(step.after, str):
        raise DefinitionError(f"step {step.name!r}: after= takes a tuple of step names, "
                              f"e.g. after=({step.after!r},)")
    if step.wait is not None:
        _check_wait(step)
    elif step.action is None:
        what = "a compensation on nothing" if step.compensate is not None else "no action"
        raise DefinitionError(f"step {step.name!r} has {what}")
    for role, action in (("action", step.action), ("compensation", step.compensate)):
        if action is not None:
            try:
                resolve_action(action)
            except DefinitionError as exc:
                raise DefinitionError(f"step {step.name!r}: {role} {exc}") from None
    for limit in ("timeout", "heartbeat_timeout", "schedule_to_start"):
        value = getattr(step, limit)
        if value is not None and value <= timedelta(0):
            raise DefinitionError(f"step {step.name!r}: {limit} must be positive")
    if step.on_timeout not in TIMEOUT_POLICIES:
        raise DefinitionError(f"step {step.name!r}: on_timeout must be one of "
                              f"{', '.join(TIMEOUT_POLICIES)}, not {step.on_timeout!r}")
    for flag in ("compensate_failed", "pivot"):
        if not isinstance(getattr(step, flag), bool):
            raise DefinitionError(f"step {step.name!r}: {flag} must be True or False")
    if step.verify is not None:
        _check_verify(step)


def _check_verify(step: Step) -> None:
    verify = step.verify
    assert verify is not None
    if step.wait is not None:
        raise DefinitionError(f"step {step.name!r}: a wait has no action to verify")
    if isinstance(verify, RemoteTask):
        raise DefinitionError(f"step {step.name!r}: verify must be a callable or "
                              "'module:function' run by the worker, not a RemoteTask")
    try:
        resolve_action(verify)
    except DefinitionError as exc:
        raise DefinitionError(f"step {step.name!r}: verify {exc}") from None


def _check_wait(step: Step) -> None:
    wait = step.wait
    if step.action is not None or step.compensate is not None:
        raise DefinitionError(f"step {step.name!r}: a wait has no action and nothing to compensate")
    if isinstance(wait, Timer):
        if (wait.duration is None) == (wait.until is None):
            raise DefinitionError(f"step {step.name!r}: a Wait needs a duration or until, not both")
        if wait.duration is not None and wait.duration < timedelta(0):
            raise DefinitionError(f"step {step.name!r}: a Wait's duration must not be negative")
    elif isinstance(wait, Signal):
        if not wait.name or not wait.name.replace("_", "").replace("-", "").isalnum():
            raise DefinitionError(f"step {step.name!r}: signal name {wait.name!r} must be "
                                  "letters, digits, _ or -")
        if wait.on_timeout not in tuple(OnSignalTimeout):
            raise DefinitionError(f"step {step.name!r}: on_timeout must be 'compensate' or "
                                  f"'continue', not {wait.on_timeout!r}")
        if wait.timeout is not None and wait.timeout <= timedelta(0):
            raise DefinitionError(f"step {step.name!r}: the signal timeout must be positive")
    else:
        raise DefinitionError(f"step {step.name!r}: wait must be a Timer or a Signal")


def resolve_action(action: Action) -> Callable[..., Any] | RemoteTask:
    """A callable or RemoteTask for an action; a "module:function" path is imported."""
    if isinstance(action, RemoteTask) or callable(action):
        return action
    if isinstance(action, str):
        module, _, attr = action.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr) if attr else None
        except (ImportError, AttributeError):
            target = None
        if not callable(target):
            raise DefinitionError(
                f"names unknown task {action!r} (use 'module:function' or RemoteTask(name))")
        return target
    raise DefinitionError(f"must be a callable, 'module:function' or RemoteTask, not {action!r}")


def _kind(step: Step) -> str:
    if isinstance(step.wait, Timer):
        return "timer"
    if isinstance(step.wait, Signal):
        return f"signal:{step.wait.name}"
    return "action"


def _action_name(action: Action | None) -> str | None:
    if action is None:
        return None
    if isinstance(action, RemoteTask):
        return f"task:{action.name}"
    if isinstance(action, str):
        return action
    return f"{getattr(action, '__module__', '?')}:{getattr(action, '__qualname__', repr(action))}"
