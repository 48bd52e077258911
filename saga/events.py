"""What happens to a run: events (facts, past tense) in, commands (imperatives) out.

`history` turns the difference between two recorded runs into the rows of the run's
event log, so every change the state machine makes leaves a trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Union

from saga.run import Checked, Role, Run, StepState, StepStatus

# Events: facts, in the past tense.


@dataclass(frozen=True)
class StepSucceeded:
    step: str
    role: Role
    fence: int
    output: Any = None


@dataclass(frozen=True)
class StepFailed:
    step: str
    role: Role
    fence: int
    error: str
    retryable: bool = True
    spread: float = 0.5  # where in the retry jitter band the next wait falls, in [0, 1)
    timed_out: bool = False


@dataclass(frozen=True)
class StepChecked:
    """A step's `verify` answered about an earlier attempt in doubt (or, before its
    compensation, about the forward step that did not succeed)."""

    step: str
    role: Role
    fence: int
    answer: Checked
    output: Any = None


@dataclass(frozen=True)
class LeaseExpired:
    step: str
    role: Role
    fence: int


@dataclass(frozen=True)
class RetryDue:
    step: str
    role: Role


@dataclass(frozen=True)
class QueueTimedOut:
    """No worker took the queued step within its schedule-to-start limit."""

    step: str
    role: Role


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
    role: Role = Role.FORWARD


@dataclass(frozen=True)
class SignalReceived:
    """A signal arrived; it is already among the run's pending signals."""

    name: str


@dataclass(frozen=True)
class CancelRequested:
    """Someone asked to cancel the run: settle what runs, then compensate what was done."""


Event = Union[StepSucceeded, StepFailed, StepChecked, LeaseExpired, RetryDue, QueueTimedOut,
              DeadlinePassed, RetryRequested, WakeUpDue, SignalReceived, CancelRequested]


# Commands: imperatives, carried out after the commit.


@dataclass(frozen=True)
class RunStep:
    step: str
    role: Role = Role.FORWARD


@dataclass(frozen=True)
class CompensateStep:
    step: str
    role: Role = Role.COMPENSATE


@dataclass(frozen=True)
class Alert:
    """Tell a person: a timeout, or a run that needs them. Recorded, logged, sent to hooks."""

    reason: str  # "timeout" | "failed" | "parked"
    message: str
    step: str | None = None


Command = Union[RunStep, CompensateStep, Alert]
Dispatch = Union[RunStep, CompensateStep]


def dispatch(step: str, role: Role) -> Dispatch:
    """The command that sends one attempt of `step` in `role` to a worker."""
    return RunStep(step) if role is Role.FORWARD else CompensateStep(step)


def prefix(role: Role | str) -> str:
    """How the event log names a role's entries: `step.*` or `compensation.*`."""
    return "step" if role == Role.FORWARD else "compensation"


@dataclass(frozen=True)
class Change:
    """What one commit did to a run: before (None when it started), after, and the
    event-log entries it wrote. Observers (logs, metrics, traces) see only these, after
    the commit, so nothing is reported that did not happen."""

    before: Run | None
    after: Run
    entries: list[dict[str, Any]] = field(default_factory=list)
    worker: str | None = None
    actor: str | None = None
    at: datetime | None = None


def history(old: Run | None, new: Run) -> list[dict[str, Any]]:
    """Event-log entries for what changed from `old` to `new`."""
    entries: list[dict[str, Any]] = []
    for key, step in new.steps.items():
        before = old.steps.get(key) if old else None
        if step.checked is not None and (before is None or before.checked != step.checked):
            entries.append(_checked(step))
        if before is not None and (before.status, before.attempt, before.error) == (
                step.status, step.attempt, step.error):
            continue
        data: dict[str, Any] = {}
        if step.error and step.status is not StepStatus.SUCCEEDED:
            data["error"] = step.error
        if step.next_attempt_at is not None:
            data["next_attempt_at"] = step.next_attempt_at.isoformat()
        if step.wake_at is not None and step.status is StepStatus.WAITING:
            data["wake_at"] = step.wake_at.isoformat()
        if step.status is StepStatus.RUNNING:
            data["fence"] = step.fence
        if step.in_doubt and step.status is not StepStatus.RUNNING:
            data["in_doubt"] = True
        entries.append({"type": f"{prefix(step.role)}.{step.status}", "step": step.name,
                        "role": str(step.role), "attempt": step.attempt, "data": data})
    if old is not None and old.parked != new.parked:
        entries.append({"type": "run.parked" if new.parked else "run.unparked", "step": None,
                        "role": None, "attempt": None,
                        "data": {"reason": new.parked} if new.parked else {}})
    if old is None or old.status is not new.status:
        entry = {"type": f"run.{'started' if old is None else new.status}", "step": None,
                 "role": None, "attempt": None, "data": {"error": new.error} if new.error else {}}
        entries.insert(0 if old is None else len(entries), entry)
    return entries


def _checked(step: StepState) -> dict[str, Any]:
    """The entry of a check's answer; a compensation it makes needless is `skipped`."""
    skipped = step.role is Role.COMPENSATE and step.checked is Checked.NOT_DONE
    data: dict[str, Any] = {"answer": str(step.checked)}
    if skipped:
        data["reason"] = "verify says the step had no effect: nothing to undo"
    return {"type": "compensation.skipped" if skipped else f"{prefix(step.role)}.checked",
            "step": step.name, "role": str(step.role), "attempt": step.attempt, "data": data}
