"""The run state machine: a recorded run and one event in, the new run and commands out; pure.

No I/O and no clock: the time comes in as `now`. A stale or duplicate event (a wrong
fence, a step no longer running) returns the run unchanged and no commands, which is what
makes Celery's at-least-once delivery safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Union

from saga import compensation
from saga.definitions import Saga, Signal, Timer
from saga.run import Kind, RunStatus, StepStatus

__all__ = ["Kind", "RunStatus", "StepStatus", "StepState", "PendingSignal", "Run", "start",
           "advance", "plan", "take", "transitions"]


@dataclass(frozen=True)
class StepState:
    """One step's forward action or its compensation, as recorded."""

    name: str
    kind: Kind
    status: StepStatus
    attempt: int = 0  # attempts claimed so far; the running one included
    fence: int = 0
    output: Any = None
    error: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    lease_expires_at: datetime | None = None
    lease_owner: str | None = None
    start_by: datetime | None = None  # queued longer than this: the schedule-to-start timeout
    wake_at: datetime | None = None  # a waiting timer fires, or a signal wait times out, then


@dataclass(frozen=True)
class PendingSignal:
    """A signal received and not yet consumed by a step (it may arrive before the wait)."""

    id: int
    name: str
    payload: Any
    consumed_by: str | None = None


StepKey = tuple[str, Kind]


@dataclass(frozen=True)
class Run:
    id: str
    saga: str
    version: int
    status: RunStatus
    input: Any
    steps: Mapping[StepKey, StepState] = field(default_factory=dict)
    error: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None
    signals: tuple[PendingSignal, ...] = ()
    cancel_requested: bool = False
    parked: str | None = None  # why the run waits for a person (or for its version to load)
    shape: str = ""  # the definition's shape hash when the run started

    def step(self, name: str, kind: Kind = Kind.FORWARD) -> StepState | None:
        return self.steps.get((name, kind))

    @property
    def outputs(self) -> dict[str, Any]:
        """Outputs of the forward steps that succeeded, by step name."""
        return {s.name: s.output for s in self.steps.values()
                if s.kind is Kind.FORWARD and s.status is StepStatus.SUCCEEDED}


# Events: facts, in the past tense.

@dataclass(frozen=True)
class StepSucceeded:
    step: str
    kind: Kind
    fence: int
    output: Any = None


@dataclass(frozen=True)
class StepFailed:
    step: str
    kind: Kind
    fence: int
    error: str
    retryable: bool = True
    spread: float = 0.5  # where in the retry jitter band the next wait falls, in [0, 1)
    timed_out: bool = False


@dataclass(frozen=True)
class LeaseExpired:
    step: str
    kind: Kind
    fence: int


@dataclass(frozen=True)
class RetryDue:
    step: str
    kind: Kind


@dataclass(frozen=True)
class QueueTimedOut:
    """No worker took the queued step within its schedule-to-start limit."""

    step: str
    kind: Kind


@dataclass(frozen=True)
class DeadlinePassed:
    """The saga's own deadline passed while it was still running forward."""


@dataclass(frozen=True)
class RetryRequested:
    """A person asked a failed run to resume from where it stopped."""


@dataclass(frozen=True)
class WakeUpDue:
    """A waiting step's time came: its timer fired, or its signal wait timed out."""

    step: str
    kind: Kind = Kind.FORWARD


@dataclass(frozen=True)
class SignalReceived:
    """A signal arrived; it is already among the run's pending signals."""

    name: str


@dataclass(frozen=True)
class CancelRequested:
    """Someone asked to cancel the run: settle what runs, then compensate what was done."""


Event = Union[StepSucceeded, StepFailed, LeaseExpired, RetryDue, QueueTimedOut, DeadlinePassed,
              RetryRequested, WakeUpDue, SignalReceived, CancelRequested]


# Commands: imperatives, carried out after the commit.

@dataclass(frozen=True)
class RunStep:
    step: str
    kind: Kind = Kind.FORWARD


@dataclass(frozen=True)
class CompensateStep:
    step: str
    kind: Kind = Kind.COMPENSATE


@dataclass(frozen=True)
class Alert:
    """Tell a person: a timeout, or a run that needs them. Recorded, logged, sent to hooks."""

    reason: str  # "timeout" | "failed"
    message: str
    step: str | None = None


Command = Union[RunStep, CompensateStep, Alert]


def start(saga: Saga, run_id: str, input: Any, now: datetime) -> tuple[Run, list[Command]]:
    """A new run of `saga` and the first steps to dispatch."""
    run = Run(id=run_id, saga=saga.name, version=saga.version, status=RunStatus.RUNNING,
              input=input, created_at=now,
              deadline_at=now + saga.timeout if saga.timeout is not None else None)
    return plan(saga, run, now)


def advance(saga: Saga, run: Run, event: Event, now: datetime) -> tuple[Run, list[Command]]:
    """Apply one event, then plan what follows. Stale or duplicate events change nothing."""
    if isinstance(event, DeadlinePassed):
        if run.status is not RunStatus.RUNNING or run.deadline_at is None or run.deadline_at > now:
            return run, []
        reason = f"the saga's deadline passed at {run.deadline_at.isoformat()}"
        run, commands = plan(saga, _begin_compensation(run, reason, now), now)
        return run, [Alert("timeout", reason), *commands]
    if isinstance(event, RetryRequested):
        return _resume(saga, run, now)
    if isinstance(event, CancelRequested):
        if run.status is not RunStatus.RUNNING:
            return run, []
        run = replace(_begin_compensation(run, "cancelled on request", now), cancel_requested=True)
        return plan(saga, run, now)
    if isinstance(event, SignalReceived):
        return plan(saga, run, now)  # a step waiting for it consumes it while planning
    step = run.steps.get((event.step, event.kind))
    if step is None:
        return run, []
    if isinstance(event, QueueTimedOut):
        if step.status is not StepStatus.QUEUED or step.start_by is None or step.start_by > now:
            return run, []
        # It never ran, but it counts as an attempt, so the retry policy bounds the loop.
        step = replace(step, attempt=step.attempt + 1)
        return _fail_attempt(saga, run, step, "not started within its schedule-to-start limit",
                             True, 0.5, now, timed_out=True)
    if isinstance(event, WakeUpDue):
        if step.status is not StepStatus.WAITING or step.wake_at is None or step.wake_at > now:
            return run, []
        return _wake(saga, run, step, now)
    if isinstance(event, RetryDue):
        if step.status is not StepStatus.RETRY_WAIT or (step.next_attempt_at or now) > now:
            return run, []
        if run.status.terminal:
            return run, []
        run = _put(run, _queued(saga, step, now))
        return _with_dispatch(saga, run, step, now)
    if step.status is not StepStatus.RUNNING or step.fence != event.fence:
        return run, []
    if isinstance(event, StepSucceeded):
        done = replace(step, status=StepStatus.SUCCEEDED, output=event.output, error=None,
                       finished_at=now, lease_expires_at=None)
        return plan(saga, _put(run, done), now)
    if isinstance(event, LeaseExpired):
        if step.lease_expires_at is not None and step.lease_expires_at > now:
            return run, []
        return _fail_attempt(saga, run, step, f"no heartbeat within the lease on attempt "
                             f"{step.attempt} (the worker died, froze or hung)", True, 0.5, now,
                             timed_out=True)
    return _fail_attempt(saga, run, step, event.error, event.retryable, event.spread, now,
                         timed_out=event.timed_out)


def _fail_attempt(saga: Saga, run: Run, step: StepState, error: str, retryable: bool,
                  spread: float, now: datetime, timed_out: bool = False) -> tuple[Run, list[Command]]:
    definition = saga.by_name[step.name]
    alerts: list[Command] = []
    if timed_out:
        alerts.append(Alert("timeout", f"{step.kind} {step.name!r} attempt {step.attempt} "
                                       f"timed out: {error}", step.name))
        if step.kind is Kind.FORWARD and run.status is RunStatus.RUNNING:
            if definition.on_timeout == "park":
                parked = replace(step, status=StepStatus.PARKED, error=error, finished_at=now,
                                 lease_expires_at=None)
                reason = f"step {step.name!r} parked after a timeout: {error}"
                run, commands = plan(saga, replace(_put(run, parked), parked=reason), now)
                return run, [*alerts, Alert("parked", reason, step.name), *commands]
            retryable = retryable and definition.on_timeout == "retry"
    policy = definition.retry if step.kind is Kind.FORWARD else definition.compensate_retry
    may_retry = (retryable and step.attempt < policy.attempts and not run.status.terminal
                 and (step.kind is Kind.COMPENSATE or run.status is RunStatus.RUNNING))
    if not may_retry:
        failed = replace(step, status=StepStatus.FAILED, error=error, finished_at=now,
                         lease_expires_at=None)
        run, commands = plan(saga, _put(run, failed), now)
        return run, [*alerts, *commands]
    wait = policy.delay(step.attempt, spread)
    if wait.total_seconds() <= 0:
        queued = _queued(saga, step, now, error=error, lease_expires_at=None)
        run, commands = _with_dispatch(saga, _put(run, queued), queued, now)
        return run, [*alerts, *commands]
    waiting = replace(step, status=StepStatus.RETRY_WAIT, error=error,
                      next_attempt_at=now + wait, lease_expires_at=None, start_by=None)
    run, commands = plan(saga, _put(run, waiting), now)
    return run, [*alerts, *commands]


def _wake(saga: Saga, run: Run, step: StepState, now: datetime) -> tuple[Run, list[Command]]:
    wait = saga.by_name[step.name].wait
    if isinstance(wait, Timer):
        done = replace(step, status=StepStatus.SUCCEEDED, finished_at=now, wake_at=None,
                       output={"woke_at": step.wake_at.isoformat() if step.wake_at else None})
        return plan(saga, _put(run, done), now)
    assert isinstance(wait, Signal)
    if wait.on_timeout == "continue":
        done = replace(step, status=StepStatus.SUCCEEDED, finished_at=now, wake_at=None,
                       output={"timed_out": True})
        return plan(saga, _put(run, done), now)
    error = f"no {wait.name!r} signal within {wait.timeout}"
    failed = replace(step, status=StepStatus.FAILED, finished_at=now, wake_at=None, error=error)
    run, commands = plan(saga, _put(run, failed), now)
    return run, [Alert("timeout", f"step {step.name!r}: {error}", step.name), *commands]


def _resume(saga: Saga, run: Run, now: datetime) -> tuple[Run, list[Command]]:
    """Put a run back to work: a failed run's given-up compensations, or parked steps."""
    if run.status is RunStatus.FAILED:
        resumed = [s for s in run.steps.values()
                   if s.kind is Kind.COMPENSATE and s.status is StepStatus.FAILED]
        status = RunStatus.COMPENSATING
    else:
        resumed = [s for s in run.steps.values() if s.status is StepStatus.PARKED]
        status = run.status
    if not resumed or run.status.terminal and status is not RunStatus.COMPENSATING:
        return run, []
    steps = dict(run.steps)
    for s in resumed:  # a fresh attempt budget; the fence keeps growing
        steps[(s.name, s.kind)] = _queued(saga, s, now, attempt=0)
    run = replace(run, steps=steps, status=status, finished_at=None, parked=None)
    run, commands = plan(saga, run, now)
    return run, [*(_command(s.name, s.kind) for s in resumed), *commands]


def _queued(saga: Saga, step: StepState, now: datetime, **changes: Any) -> StepState:
    limit = saga.by_name[step.name].schedule_to_start if step.kind is Kind.FORWARD else None
    return replace(step, status=StepStatus.QUEUED, queued_at=now, next_attempt_at=None,
                   finished_at=None, start_by=now + limit if limit else None, **changes)


def _with_dispatch(saga: Saga, run: Run, step: StepState, now: datetime) -> tuple[Run, list[Command]]:
    run, commands = plan(saga, run, now)
    return run, [_command(step.name, step.kind), *commands]


def plan(saga: Saga, run: Run, now: datetime) -> tuple[Run, list[Command]]:
    """Move the run as far as its recorded steps allow; return the steps to dispatch."""
    if run.status.terminal:
        return run, []
    if run.status is RunStatus.RUNNING:
        failed = [s for s in run.steps.values()
                  if s.kind is Kind.FORWARD and s.status is StepStatus.FAILED]
        if failed:
            reason = f"step {failed[0].name!r} failed: {failed[0].error}"
            return plan(saga, _begin_compensation(run, reason, now), now)
        return _plan_forward(saga, run, now)
    return _plan_compensation(saga, run, now)


def _plan_forward(saga: Saga, run: Run, now: datetime) -> tuple[Run, list[Command]]:
    commands: list[Command] = []
    run = _consume_signals(saga, run, now)
    steps = dict(run.steps)
    for name in saga.order:  # in graph order, so a wait that ends at once frees its successors
        if (name, Kind.FORWARD) in steps:
            continue
        if all(_succeeded(steps.get((dep, Kind.FORWARD))) for dep in saga.graph[name]):
            wait = saga.by_name[name].wait
            if wait is None:
                steps[(name, Kind.FORWARD)] = _queued(
                    saga, StepState(name, Kind.FORWARD, StepStatus.QUEUED), now)
                commands.append(RunStep(name))
                continue
            waiting = _begin_wait(saga, run, StepState(name, Kind.FORWARD, StepStatus.WAITING,
                                                       queued_at=now, started_at=now), now)
            run = replace(run, steps={**steps, (name, Kind.FORWARD): waiting})
            run = _consume_signals(saga, run, now)
            steps = dict(run.steps)
            if steps[(name, Kind.FORWARD)].status is StepStatus.FAILED:
                return plan(saga, run, now)
    run = replace(run, steps=steps)
    if all(_succeeded(steps.get((name, Kind.FORWARD))) for name in saga.order):
        run = replace(run, status=RunStatus.SUCCEEDED, finished_at=now)
    return run, commands


def _begin_wait(saga: Saga, run: Run, step: StepState, now: datetime) -> StepState:
    wait = saga.by_name[step.name].wait
    if isinstance(wait, Signal):
        return replace(step, wake_at=now + wait.timeout if wait.timeout else None)
    assert isinstance(wait, Timer)
    if wait.duration is not None:
        wake_at = now + wait.duration
    else:
        try:
            wake_at = wait.until(run.input, run.outputs)
            if not isinstance(wake_at, datetime) or wake_at.tzinfo is None:
                raise TypeError(f"until() must return an aware datetime, not {wake_at!r}")
        except Exception as exc:  # a bad deadline is the step's failure, not the engine's
            return replace(step, status=StepStatus.FAILED, finished_at=now,
                           error=f"until() failed: {type(exc).__name__}: {exc}")
    if wake_at <= now:
        return replace(step, status=StepStatus.SUCCEEDED, finished_at=now,
                       output={"woke_at": wake_at.isoformat()})
    return replace(step, wake_at=wake_at)


def _consume_signals(saga: Saga, run: Run, now: datetime) -> Run:
    """Give each step waiting for a signal the oldest unconsumed one of that name."""
    signals = list(run.signals)
    steps = dict(run.steps)
    for key, step in run.steps.items():
        wait = saga.by_name[step.name].wait
        if step.status is not StepStatus.WAITING or not isinstance(wait, Signal):
            continue
        for i, signal in enumerate(signals):
            if signal.name == wait.name and signal.consumed_by is None:
                signals[i] = replace(signal, consumed_by=step.name)
                steps[key] = replace(step, status=StepStatus.SUCCEEDED, output=signal.payload,
                                     finished_at=now, wake_at=None)
                break
    return replace(run, steps=steps, signals=tuple(signals))


def _begin_compensation(run: Run, reason: str, now: datetime) -> Run:
    """Turn to compensation; steps not yet claimed will never run, running ones settle."""
    steps = dict(run.steps)
    for key, s in run.steps.items():
        if s.kind is Kind.FORWARD and s.status in (StepStatus.QUEUED, StepStatus.RETRY_WAIT,
                                                   StepStatus.WAITING):
            steps[key] = replace(s, status=StepStatus.CANCELLED, finished_at=now,
                                 next_attempt_at=None, start_by=None, wake_at=None)
    return replace(run, status=RunStatus.COMPENSATING, steps=steps, error=reason)


def _plan_compensation(saga: Saga, run: Run, now: datetime) -> tuple[Run, list[Command]]:
    given_up = [s for s in run.steps.values()
                if s.kind is Kind.COMPENSATE and s.status is StepStatus.FAILED]
    if given_up and any(s.status.active for s in run.steps.values()):
        return run, []  # start nothing new, but let what is in flight settle first
    if given_up:
        reason = f"compensation of {given_up[0].name!r} failed: {given_up[0].error}"
        if run.error and reason not in run.error:
            reason = f"{run.error}; {reason}"
        return (replace(run, status=RunStatus.FAILED, finished_at=now, error=reason),
                [Alert("failed", reason, given_up[0].name)])
    steps = dict(run.steps)
    commands: list[Command] = []
    for name in compensation.ready(saga, run.steps):
        steps[(name, Kind.COMPENSATE)] = _queued(
            saga, StepState(name, Kind.COMPENSATE, StepStatus.QUEUED), now)
        commands.append(CompensateStep(name))
    run = replace(run, steps=steps)
    if compensation.finished(saga, steps):
        done = RunStatus.CANCELLED if run.cancel_requested else RunStatus.COMPENSATED
        run = replace(run, status=done, finished_at=now)
    return run, commands


def take(run: Run, step: str, kind: Kind, owner: str, now: datetime,
         lease_expires_at: datetime) -> Run:
    """Claim a just-queued step for the worker that queued it, to run it without a message.

    The same change the store's claim makes (a new attempt under a new fence), made in the
    transaction that queued the step.
    """
    queued = run.steps[(step, kind)]
    assert queued.status is StepStatus.QUEUED, queued
    return _put(run, replace(queued, status=StepStatus.RUNNING, attempt=queued.attempt + 1,
                             fence=queued.fence + 1, lease_owner=owner, started_at=now,
                             lease_expires_at=lease_expires_at, start_by=None))


def transitions(old: Run | None, new: Run) -> list[dict[str, Any]]:
    """History entries for what changed from `old` to `new`, for the event log."""
    entries: list[dict[str, Any]] = []
    for key, step in new.steps.items():
        before = old.steps.get(key) if old else None
        if before is not None and (before.status, before.attempt, before.error) == (
                step.status, step.attempt, step.error):
            continue
        prefix = "step" if step.kind is Kind.FORWARD else "compensation"
        data: dict[str, Any] = {}
        if step.error and step.status is not StepStatus.SUCCEEDED:
            data["error"] = step.error
        if step.next_attempt_at is not None:
            data["next_attempt_at"] = step.next_attempt_at.isoformat()
        if step.wake_at is not None and step.status is StepStatus.WAITING:
            data["wake_at"] = step.wake_at.isoformat()
        if step.status is StepStatus.RUNNING:
            data["fence"] = step.fence
        entries.append({"type": f"{prefix}.{step.status}", "step": step.name,
                        "kind": str(step.kind), "attempt": step.attempt, "data": data})
    if old is not None and old.parked != new.parked:
        entries.append({"type": "run.parked" if new.parked else "run.unparked", "step": None,
                        "kind": None, "attempt": None,
                        "data": {"reason": new.parked} if new.parked else {}})
    if old is None or old.status is not new.status:
        kind = "started" if old is None else str(new.status)
        entries.insert(0 if old is None else len(entries), {"type": f"run.{kind}", "step": None, "kind": None,
                        "attempt": None, "data": {"error": new.error} if new.error else {}})
    return entries


def _put(run: Run, step: StepState) -> Run:
    return replace(run, steps={**run.steps, (step.name, step.kind): step})


def _succeeded(step: StepState | None) -> bool:
    return step is not None and step.status is StepStatus.SUCCEEDED


def _command(name: str, kind: Kind) -> Command:
    return RunStep(name) if kind is Kind.FORWARD else CompensateStep(name)
