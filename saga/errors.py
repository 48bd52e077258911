"""The exceptions the orchestrator raises and understands.

    SagaError
    ├── DefinitionError      a saga definition is wrong (raised at import)
    ├── UnknownSaga          no loaded saga has that name (or version)
    ├── RunNotFound          no run has that id
    ├── IdempotencyConflict  an Idempotency-Key reused with another request body
    ├── InvalidInput         the input fails the saga's schema
    ├── InvalidBackfill      a backfill request is wrong (nothing was written)
    ├── UnknownSignal        the run's saga declares no signal of that name
    ├── RunStateConflict     the run's status does not allow this (cancel a finished run…)
    │   ├── RunParked        no loaded definition fits the run (version gone or changed)
    │   └── RunBusy          another transaction holds the run (a sweep skips it)
    ├── StoreConflict        a row changed under a transaction that locked it; abandoned
    ├── LeaseLost            raised inside a step: another worker owns it now, stop
    ├── TokenError           an API token cannot be created or revoked as asked
    ├── NoDeploymentId       the deployment table was emptied by hand
    └── NonRetryable         raised by a step: do not try it again
"""

from __future__ import annotations

from typing import Any


class SagaError(Exception):
    """Something went wrong in the saga orchestrator."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class DefinitionError(SagaError):
    """The saga definition is invalid."""


class UnknownSaga(SagaError):
    """No saga with that name is loaded."""


class RunNotFound(SagaError):
    """No run has that id."""


class IdempotencyConflict(SagaError):
    """The Idempotency-Key was already used with a different request body."""


class InvalidInput(SagaError):
    """The input does not match the saga's schema."""

    def __init__(self, errors: dict[str, Any]) -> None:
        fields = ", ".join(sorted(errors)) or "input"
        super().__init__(f"invalid input: {fields}")
        self.errors = errors


class InvalidBackfill(SagaError):
    """The backfill request is invalid; nothing was written."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        shown = "; ".join(f"{where}: {' '.join(texts)}" for where, texts in errors.items())
        super().__init__(f"invalid backfill: {shown}")
        self.errors = errors


class UnknownSignal(SagaError):
    """The run's saga declares no signal of that name."""


class RunStateConflict(SagaError):
    """The run's status does not allow this."""

    def __init__(self, message: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # a finer problem type for the API ("run-not-failed"), if any


class RunParked(RunStateConflict):
    """No loaded definition fits this run: its version is not loaded, or changed shape."""


class RunBusy(RunStateConflict):
    """Another transaction holds this run's lock."""


class StoreConflict(SagaError):
    """A row changed under a transaction that read it locked; the change is abandoned."""


class LeaseLost(SagaError):
    """This attempt lost its lease: another worker owns the step now. Stop at once."""


class TokenError(SagaError, ValueError):
    """A token cannot be created or revoked as asked; the message says why."""


class NoDeploymentId(SagaError, LookupError):
    """The database has the deployment table but no row: it was emptied by hand."""


class NonRetryable(SagaError):
    """The step failed in a way that another attempt cannot fix."""
