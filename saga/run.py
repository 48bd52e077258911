"""The statuses of runs and steps, as stored (lowercase strings)."""

from enum import StrEnum


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


class Kind(StrEnum):
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
