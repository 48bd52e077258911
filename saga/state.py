"""The run state machine: a recorded run and one event in, the new run and commands out; pure.

No I/O and no clock: the time comes in as `now`. A stale or duplicate event (a wrong
fence, a step no longer running) returns the run unchanged and no commands, which is what
makes Celery's at-least-once delivery safe. Compensation's own planning is in
`saga.compensation`; the values are in `saga.run` and `saga.events`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from saga import compensation
from saga.definitions import OnSignalTimeout, OnTimeout, Saga, Signal, Timer
from saga.events import (
    Alert,
    CancelRequested,
    Command,
    DeadlinePassed,
    Event,
    LeaseExpired,
    QueueTimedOut,
    RetryDue,
    RetryRequested,
    RunStep,
    SignalReceived,
    StepSucceeded,
    WakeUpDue,
    dispatch,
)
from saga.run import Role, Run, RunStatus, StepState, StepStatus, queued

__all__ = ["start", "advance", "plan", "claim"]


def start(saga: Saga, run_id: str, input: Any, now: datetime) -> tuple[Run, list[Command]]:
    """A new run of `saga` and the first steps to dispatch."""
    run = Run(id=run_id, saga=saga.name, version=saga.version, status=RunStatus.RUNNING,
              input=input, created_at=now,
              deadline_at=now + saga.timeout if saga.timeout is not None else None,
              shape=saga.shape_hash)
    return plan(saga, run, now)


def advance(saga: Saga, run: Run, event: Event, now: datetime) -> tuple[Run, list[Command]]:
    """Apply one event, then plan what follows. Stale or duplicate events change nothing."""
    if isinstance(event, DeadlinePassed):
        if run.status is not RunStatus.RUNNING or run.deadline_at is None or run.deadline_at > now:
            return run, []
        reason = f"the saga's deadline passed at {run.deadline_at.isoformat()}"
        run, commands = plan(saga, compensation.begin(run, reason, now), now)
        return run, [Alert("timeout", reason), *commands]
    if isinstance(event, RetryRequested):
        return _resume(saga, run, now)
    if isinstance(event, CancelRequested):
        if run.status is not RunStatus.RUNNING:
            return run, []
        run = replace(compensation.begin(run, "cancelled on request", now), cancel_requested=True)
        return plan(saga, run, now)
    if isinstance(event, SignalReceived):
        return plan(saga, run, now)  # a step waiting for it consumes it while planning
    step = run.steps.get((event.step, event.role))
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
        run = run.put(queued(saga, step, now))
        return _with_dispatch(saga, run, step, now)
    if step.status is not StepStatus.RUNNING or step.fence != event.fence:
        return run, []
    if isinstance(event, StepSucceeded):
        done = replace(step, status=StepStatus.SUCCEEDED, output=event.output, error=None,
                       finished_at=now, lease_expires_at=None)
        return plan(saga, run.put(done), now)
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
        alerts.append(Alert("timeout", f"{step.role} {step.name!r} attempt {step.attempt} "
                                       f"timed out: {error}", step.name))
        if step.role is Role.FORWARD and run.status is RunStatus.RUNNING:
            if definition.on_timeout == OnTimeout.PARK:
                parked = replace(step, status=StepStatus.PARKED, error=error, finished_at=now,
                                 lease_expires_at=None)
                reason = f"step {step.name!r} parked after a timeout: {error}"
                run, commands = plan(saga, replace(run.put(parked), parked=reason), now)
                return run, [*alerts, Alert("parked", reason, step.name), *commands]
            retryable = retryable and definition.on_timeout == OnTimeout.RETRY
    policy = definition.for_role(step.role)[1]
    may_retry = (retryable and step.attempt < policy.attempts and not run.status.terminal
                 and (step.role is Role.COMPENSATE or run.status is RunStatus.RUNNING))
    if not may_retry:
        failed = replace(step, status=StepStatus.FAILED, error=error, finished_at=now,
                         lease_expires_at=None)
        run, commands = plan(saga, run.put(failed), now)
        return run, [*alerts, *commands]
    wait = policy.delay(step.attempt, spread)
    if wait.total_seconds() <= 0:
        again = queued(saga, step, now, error=error, lease_expires_at=None)
        run, commands = _with_dispatch(saga, run.put(again), again, now)
        return run, [*alerts, *commands]
    waiting = replace(step, status=StepStatus.RETRY_WAIT, error=error,
                      next_attempt_at=now + wait, lease_expires_at=None, start_by=None)
    run, commands = plan(saga, run.put(waiting), now)
    return run, [*alerts, *commands]


def _wake(saga: Saga, run: Run, step: StepState, now: datetime) -> tuple[Run, list[Command]]:
    wait = saga.by_name[step.name].wait
    if isinstance(wait, Timer):
        done = replace(step, status=StepStatus.SUCCEEDED, finished_at=now, wake_at=None,
                       output={"woke_at": step.wake_at.isoformat() if step.wake_at else None})
        return plan(saga, run.put(done), now)
    assert isinstance(wait, Signal)
    if wait.on_timeout == OnSignalTimeout.CONTINUE:
        done = replace(step, status=StepStatus.SUCCEEDED, finished_at=now, wake_at=None,
                       output={"timed_out": True})
        return plan(saga, run.put(done), now)
    error = f"no {wait.name!r} signal within {wait.timeout}"
    failed = replace(step, status=StepStatus.FAILED, finished_at=now, wake_at=None, error=error)
    run, commands = plan(saga, run.put(failed), now)
    return run, [Alert("timeout", f"step {step.name!r}: {error}", step.name), *commands]


def _resume(saga: Saga, run: Run, now: datetime) -> tuple[Run, list[Command]]:
    """Put a run back to work: a failed run's given-up compensations, or parked steps."""
    if run.status is RunStatus.FAILED:
        resumed = [s for s in run.steps.values()
                   if s.role is Role.COMPENSATE and s.status is StepStatus.FAILED]
        status = RunStatus.COMPENSATING
    else:
        resumed = [s for s in run.steps.values() if s.status is StepStatus.PARKED]
        status = run.status
    if not resumed or run.status.terminal and status is not RunStatus.COMPENSATING:
        return run, []
    steps = dict(run.steps)
    for s in resumed:  # a fresh attempt budget; the fence keeps growing
        steps[(s.name, s.role)] = queued(saga, s, now, attempt=0)
    run = replace(run, steps=steps, status=status, finished_at=None, parked=None)
    run, commands = plan(saga, run, now)
    return run, [*(dispatch(s.name, s.role) for s in resumed), *commands]


def _with_dispatch(saga: Saga, run: Run, step: StepState, now: datetime) -> tuple[Run, list[Command]]:
    run, commands = plan(saga, run, now)
    return run, [dispatch(step.name, step.role), *commands]


def plan(saga: Saga, run: Run, now: datetime) -> tuple[Run, list[Command]]:
    """Move the run as far as its recorded steps allow; return the steps to dispatch."""
    if run.status.terminal:
        return run, []
    if run.status is RunStatus.RUNNING:
        failed = [s for s in run.steps.values()
                  if s.role is Role.FORWARD and s.status is StepStatus.FAILED]
        if failed:
            reason = f"step {failed[0].name!r} failed: {failed[0].error}"
            return plan(saga, compensation.begin(run, reason, now), now)
        return _plan_forward(saga, run, now)
    return compensation.plan(saga, run, now)


def _plan_forward(saga: Saga, run: Run, now: datetime) -> tuple[Run, list[Command]]:
    commands: list[Command] = []
    run = _consume_signals(saga, run, now)
    steps = dict(run.steps)
    for name in saga.order:  # in graph order, so a wait that ends at once frees its successors
        if (name, Role.FORWARD) in steps:
            continue
        if all(_succeeded(steps.get((dep, Role.FORWARD))) for dep in saga.graph[name]):
            wait = saga.by_name[name].wait
            if wait is None:
                steps[(name, Role.FORWARD)] = queued(
                    saga, StepState(name, Role.FORWARD, StepStatus.QUEUED), now)
                commands.append(RunStep(name))
                continue
            waiting = _begin_wait(saga, run, StepState(name, Role.FORWARD, StepStatus.WAITING,
                                                       queued_at=now, started_at=now), now)
            run = replace(run, steps={**steps, (name, Role.FORWARD): waiting})
            run = _consume_signals(saga, run, now)
            steps = dict(run.steps)
            if steps[(name, Role.FORWARD)].status is StepStatus.FAILED:
                return plan(saga, run, now)
    run = replace(run, steps=steps)
    if all(_succeeded(steps.get((name, Role.FORWARD))) for name in saga.order):
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
        assert wait.until is not None  # a Wait has a duration or an until (checked when built)
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


def claim(saga: Saga, run: Run, step: str, role: Role, owner: str, now: datetime,
          lease_expires_at: datetime) -> Run:
    """Give a queued step's next attempt to `owner` under a new fence; unchanged if not allowed.

    Only a queued step is claimed: an expired lease is a failed attempt, handled by the
    sweeper (retry policy, on_timeout, alert), never silently taken over. The attempt
    cap of the step's retry policy holds here, whatever the broker redelivers.
    """
    current = run.steps.get((step, role))
    wanted = RunStatus.RUNNING if role is Role.FORWARD else RunStatus.COMPENSATING
    policy = saga.by_name[step].for_role(role)[1] if step in saga.by_name else None
    if (current is None or current.status is not StepStatus.QUEUED or run.status is not wanted
            or policy is None or current.attempt >= policy.attempts):
        return run
    run = run.put(replace(current, status=StepStatus.RUNNING, attempt=current.attempt + 1,
                          fence=current.fence + 1, lease_owner=owner, started_at=now,
                          lease_expires_at=lease_expires_at, start_by=None,
                          next_attempt_at=None))
    if run.parked and not any(s.status is StepStatus.PARKED for s in run.steps.values()):
        # Parked for its version, which is loaded again (a parked step waits for a person
        # instead, and keeps the flag).
        run = replace(run, parked=None)
    return run


def _succeeded(step: StepState | None) -> bool:
    return step is not None and step.status is StepStatus.SUCCEEDED
