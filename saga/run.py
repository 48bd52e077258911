"""A run as recorded: its status, its steps' states and its pending signals; plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saga.definitions import Saga


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    COMPENSATED = "compensated"
    FAILED = "failed"  # compensation could not finish: a person must look
    CANCELLED = "cancelled"  # cancelled on request, and what it had done was compensated

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.COMPENSATED, RunStatus.FAILED,
                        RunStatus.CANCELLED)


class Role(StrEnum):
    """What an attempt does: the step's forward action, or its compensation."""

    FORWARD = "forward"
    COMPENSATE = "compensate"


class StepStatus(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"  # a timer or a signal: a row with a due time, no worker, no message
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # never to run: the run turned to compensation first
    PARKED = "parked"  # timed out under on_timeout="park": waits for a person to retry it

    @property
    def active(self) -> bool:
        return self in (StepStatus.QUEUED, StepStatus.WAITING, StepStatus.RUNNING,
                        StepStatus.RETRY_WAIT)


class Checked(StrEnum):
    """What a step's `verify` answered about an attempt in doubt."""

    DONE = "done"  # it took effect: its output is the step's output, the action is not called
    NOT_DONE = "not_done"  # it had no effect: call the action (or skip the compensation)
    UNKNOWN = "unknown"  # no one can tell: a person must look


@dataclass(frozen=True)
class StepState:
    """One step's forward action or its compensation, as recorded."""

    name: str
    role: Role
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
    # An attempt ended without a known outcome (its lease ran out, it timed out) and no
    # success or check has told since whether it took effect.
    in_doubt: bool = False
    checked: Checked | None = None  # what this attempt's check of an earlier one answered


@dataclass(frozen=True)
class PendingSignal:
    """A signal received and not yet consumed by a step (it may arrive before the wait)."""

    id: int
    name: str
    payload: Any
    consumed_by: str | None = None


StepKey = tuple[str, Role]


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

    def step(self, name: str, role: Role = Role.FORWARD) -> StepState | None:
        return self.steps.get((name, role))

    @property
    def outputs(self) -> dict[str, Any]:
        """Outputs of the forward steps that succeeded, by step name."""
        return {s.name: s.output for s in self.steps.values()
                if s.role is Role.FORWARD and s.status is StepStatus.SUCCEEDED}

    def put(self, step: StepState) -> Run:
        """This run with `step` recorded in place of its earlier state."""
        return replace(self, steps={**self.steps, (step.name, step.role): step})


def queued(saga: Saga, step: StepState, now: datetime, **changes: Any) -> StepState:
    """`step` queued for its next attempt now (with its schedule-to-start limit, if any)."""
    limit = saga.by_name[step.name].schedule_to_start if step.role is Role.FORWARD else None
    return replace(step, status=StepStatus.QUEUED, queued_at=now, next_attempt_at=None,
                   finished_at=None, start_by=now + limit if limit else None, **changes)
