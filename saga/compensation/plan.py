"""Turning a run to compensation, and planning each next compensation until it is undone."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from saga.compensation.order import finished, ready
from saga.definitions import Saga
from saga.events import Alert, Command, CompensateStep
from saga.run import Role, Run, RunStatus, StepState, StepStatus, queued


def begin(run: Run, reason: str, now: datetime) -> Run:
    """Turn to compensation; steps not yet claimed will never run, running ones settle."""
    steps = dict(run.steps)
    for key, s in run.steps.items():
        if s.role is Role.FORWARD and s.status in (StepStatus.QUEUED, StepStatus.RETRY_WAIT,
                                                   StepStatus.WAITING):
            steps[key] = replace(s, status=StepStatus.CANCELLED, finished_at=now,
                                 next_attempt_at=None, start_by=None, wake_at=None)
    return replace(run, status=RunStatus.COMPENSATING, steps=steps, error=reason)


def plan(saga: Saga, run: Run, now: datetime) -> tuple[Run, list[Command]]:
    """Queue the compensations that may start now; end the run when all are done or one gave up."""
    given_up = [s for s in run.steps.values()
                if s.role is Role.COMPENSATE and s.status is StepStatus.FAILED]
    if given_up and any(s.status.active for s in run.steps.values()):
        return run, []  # start nothing new, but let what is in flight settle first
    if given_up:
        reason = f"compensation of {given_up[0].name!r} failed: {given_up[0].error}"
        if run.error and reason not in run.error:
            reason = f"{run.error}; {reason}"
        return (replace(run, status=RunStatus.FAILED, finished_at=now, error=reason),
                [Alert("failed", reason, given_up[0].name)])
    commands: list[Command] = []
    for name in ready(saga, run.steps):
        run = run.put(queued(saga, StepState(name, Role.COMPENSATE, StepStatus.QUEUED), now))
        commands.append(CompensateStep(name))
    if finished(saga, run.steps):
        done = RunStatus.CANCELLED if run.cancel_requested else RunStatus.COMPENSATED
        run = replace(run, status=done, finished_at=now)
    return run, commands
