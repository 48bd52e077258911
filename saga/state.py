"""The run state machine: a recorded run and one event in, the new run and commands out; pure.

No I/O and no clock: the time comes in as `now`. A stale or duplicate event (a wrong
fence, a step no longer running) returns the run unchanged and no commands, which is what
makes Celery's at-least-once delivery safe. Compensation's own planning is in
`saga.compensation`; the values are in `saga.run` and `saga.events`.

Two rules bound what a failure may undo. Past the saga's pivot nothing is: a step that
cannot succeed parks the run for a person, and a cancel is refused. An attempt whose
outcome is unknown leaves its step in doubt: the next attempt asks the step's `verify`
first (`must_check`), and its answer (`StepChecked`) says done, act, or park.
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
    StepChecked,
    StepSucceeded,
    WakeUpDue,
    dispatch,
)
from saga.run import Checked, Role, Run, RunStatus, StepState, StepStatus, queued

__all__ = ["start", "advance", "plan", "claim", "pivot_reached", "must_check", "acts_after"]


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
        reached = pivot_reached(saga, run)
        if reached:  # nothing may be undone: say so once, and go on
            return replace(run, deadline_at=None), [Alert(
                "timeout", f"{reason}, but {reached}: it goes on, as nothing may be undone")]
        run, commands = plan(saga, compensation.begin(run, reason, now), now)
        return run, [Alert("timeout", reason), *commands]
    if isinstance(event, RetryRequested):
        return _resume(saga, run, now)
    if isinstance(event, CancelRequested):
        if run.status is not RunStatus.RUNNING or pivot_reached(saga, run):
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
                             True, 0.5, now, timed_out=True, ran=False)
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
                       finished_at=now, lease_expires_at=None, in_doubt=False)
        return plan(saga, run.put(done), now)
    if isinstance(event, StepChecked):
        return _checked(saga, run, replace(step, checked=event.answer), event, now)
    if isinstance(event, LeaseExpired):
        if step.lease_expires_at is not None and step.lease_expires_at > now:
            return run, []
        return _fail_attempt(saga, run, step, f"no heartbeat within the lease on attempt "
                             f"{step.attempt} (the worker died, froze or hung)", True, 0.5, now,
                             timed_out=True)
    return _fail_attempt(saga, run, step, event.error, event.retryable, event.spread, now,
                         timed_out=event.timed_out)


def _fail_attempt(saga: Saga, run: Run, step: StepState, error: str, retryable: bool,
                  spread: float, now: datetime, timed_out: bool = False,
                  ran: bool = True) -> tuple[Run, list[Command]]:
    """One attempt failed. A timed-out one that ran (`ran`) leaves the step in doubt: it
    may have had its effect, and no one knows."""
    definition = saga.by_name[step.name]
    alerts: list[Command] = []
    if timed_out:
        alerts.append(Alert("timeout", f"{step.role} {step.name!r} attempt {step.attempt} "
                                       f"timed out: {error}", step.name))
        if ran and step.role is Role.FORWARD:
            step = replace(step, in_doubt=True)
        if step.role is Role.FORWARD and run.status is RunStatus.RUNNING:
            if definition.on_timeout == OnTimeout.PARK:
                run, commands = _park(saga, run, replace(step, error=error),
                                      f"step {step.name!r} parked after a timeout: {error}", now)
                return run, [*alerts, *commands]
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


def _checked(saga: Saga, run: Run, step: StepState, event: StepChecked,
             now: datetime) -> tuple[Run, list[Command]]:
    """What a check's answer means: the step is done, its action (or undo) runs, or it parks.

    Forward, after an attempt in doubt: done records the output without calling the action
    again, not done lets this attempt call it, unknown parks the run for a person.
    Compensating a step that did not succeed: not done means nothing to undo, so the
    compensation is skipped (succeeds at once); done or unknown lets it undo.
    """
    if step.role is Role.COMPENSATE:
        if event.answer is Checked.NOT_DONE:
            skipped = replace(step, status=StepStatus.SUCCEEDED, finished_at=now, error=None,
                              lease_expires_at=None,
                              output={"skipped": "verify says the step had no effect"})
            return plan(saga, run.put(skipped), now)
        return run.put(step), []
    if event.answer is Checked.DONE:
        done = replace(step, status=StepStatus.SUCCEEDED, output=event.output, in_doubt=False,
                       finished_at=now, error=None, lease_expires_at=None)
        return plan(saga, run.put(done), now)
    if event.answer is Checked.NOT_DONE:
        return run.put(replace(step, in_doubt=False)), []
    error = "verify cannot tell whether an earlier attempt took effect"
    if run.status is not RunStatus.RUNNING:  # settling while compensating: its undo asks again
        failed = replace(step, status=StepStatus.FAILED, finished_at=now, lease_expires_at=None,
                         error=error)
        return plan(saga, run.put(failed), now)
    return _park(saga, run, replace(step, error=error),
                 f"step {step.name!r} parked: {error}, so it is neither done again nor undone",
                 now)


def _park(saga: Saga, run: Run, step: StepState, reason: str,
          now: datetime) -> tuple[Run, list[Command]]:
    """Stop `step` and flag the run for a person (who resumes it with a retry)."""
    parked = replace(step, status=StepStatus.PARKED, finished_at=now, lease_expires_at=None,
                     next_attempt_at=None, start_by=None, wake_at=None)
    run, commands = plan(saga, replace(run.put(parked), parked=reason), now)
    return run, [Alert("parked", reason, step.name), *commands]


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
        # A parked step goes on only while the run does: once the run compensates, the
        # step is settled and only its compensation is left to do.
        resumed = [s for s in run.steps.values()
                   if s.status is StepStatus.PARKED and run.status is RunStatus.RUNNING]
        status = run.status
    if not resumed or run.status.terminal and status is not RunStatus.COMPENSATING:
        return run, []
    steps = dict(run.steps)
    waits = [s for s in resumed if saga.by_name[s.name].wait is not None]
    for s in resumed:  # a fresh attempt budget; the fence keeps growing
        if s in waits:  # a wait that failed after the pivot waits again
            steps[(s.name, s.role)] = _begin_wait(saga, run, replace(
                s, status=StepStatus.WAITING, queued_at=now, started_at=now, finished_at=None,
                error=None), now)
        else:
            steps[(s.name, s.role)] = queued(saga, s, now, attempt=0)
    run = replace(run, steps=steps, status=status, finished_at=None, parked=None)
    run, commands = plan(saga, run, now)
    return run, [*(dispatch(s.name, s.role) for s in resumed if s not in waits), *commands]


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
        for step in failed:
            reason = _undoing_forbidden(saga, run, step)
            if reason is not None:
                return _park(saga, run, step, reason, now)
        if failed:
            reason = f"step {failed[0].name!r} failed: {failed[0].error}"
            return plan(saga, compensation.begin(run, reason, now), now)
        return _plan_forward(saga, run, now)
    return compensation.plan(saga, run, now)


def pivot_reached(saga: Saga, run: Run) -> str | None:
    """Why the run may be past its point of no return, or None: its pivot succeeded, is
    running, or ended an attempt in doubt. Then a cancel is refused and a passed deadline
    only alerts; a failure still compensates until the pivot has succeeded (or parks, if
    the pivot itself may have taken effect, see `_undoing_forbidden`)."""
    pivot = run.step(saga.pivot) if saga.pivot is not None else None
    if pivot is None:
        return None
    if pivot.status is StepStatus.SUCCEEDED:
        return f"its pivot {pivot.name!r} succeeded"
    if pivot.status is StepStatus.RUNNING:
        return f"its pivot {pivot.name!r} is running, and once it succeeds nothing is undone"
    if pivot.in_doubt:
        return f"its pivot {pivot.name!r} may have taken effect (an attempt ended in doubt)"
    return None


def _past_pivot(saga: Saga, run: Run) -> bool:
    pivot = run.step(saga.pivot) if saga.pivot is not None else None
    return pivot is not None and pivot.status is StepStatus.SUCCEEDED


def _undoing_forbidden(saga: Saga, run: Run, step: StepState) -> str | None:
    """Why a step that failed for good parks the run instead of compensating it, if it does."""
    if _past_pivot(saga, run):
        return (f"step {step.name!r} failed after the pivot {saga.pivot!r} succeeded, so "
                f"nothing may be undone; it waits for a person to retry it: {step.error}")
    if (step.name == saga.pivot and step.in_doubt
            and saga.by_name[step.name].compensate is None):
        return (f"the pivot {step.name!r} may have taken effect (an attempt ended in doubt) "
                f"and has no compensation, so what came before is not undone; it waits for "
                f"a person to retry it: {step.error}")
    return None


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
                          next_attempt_at=None, checked=None))
    if run.parked and not any(s.status is StepStatus.PARKED for s in run.steps.values()):
        # Parked for its version, which is loaded again (a parked step waits for a person
        # instead, and keeps the flag).
        run = replace(run, parked=None)
    return run


def must_check(saga: Saga, run: Run, step: str, role: Role, fence: int) -> bool:
    """Whether the attempt holding `fence` asks the step's `verify` before it acts.

    Forward: when an earlier attempt is in doubt. Compensating: when the forward step did
    not succeed (it failed or is in doubt), to learn whether there is anything to undo.
    An attempt whose fence is stale checks too: its answer is refused, so it stops there.
    """
    definition = saga.by_name.get(step)
    current = run.steps.get((step, role))
    if definition is None or definition.verify is None or current is None:
        return False
    if current.fence != fence or current.status is not StepStatus.RUNNING:
        return True
    if role is Role.FORWARD:
        return current.in_doubt
    forward = run.step(step)
    return forward is not None and forward.status is not StepStatus.SUCCEEDED


def acts_after(check: StepChecked) -> bool:
    """Whether the attempt goes on to call its action (or undo) after this answer.

    The same attempt goes on, under its fence, once the answer is committed; otherwise the
    answer is the attempt's outcome."""
    if check.role is Role.FORWARD:
        return check.answer is Checked.NOT_DONE
    return check.answer is not Checked.NOT_DONE


def _succeeded(step: StepState | None) -> bool:
    return step is not None and step.status is StepStatus.SUCCEEDED
