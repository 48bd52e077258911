"""Faults the saga test kit injects in one process: an attempt that fails, times out or crashes.

A `Fault` names a step, its role (the forward action or its compensation), an attempt and
a point of the worker's code path, the crash points of `saga.testing.faults`:

    before_effect   the step's code has not run yet
    after_effect    the step's code returned: its effect happened, nothing is recorded yet
    before_commit   inside the transaction recording the attempt's outcome, not committed
    after_commit    the outcome committed; what it queued is not published yet

`error` (retryable), `nonretryable` and `timeout` raise in the worker at before_effect or
after_effect, so the attempt fails through the worker's own handling. `crash` raises
`Crashed`, which no `except Exception` stops: the stack unwinds as if the process died
there, an open transaction rolls back, nothing more is published, and the step is left
running under its lease, which only the sweeper ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from saga.errors import NonRetryable
from saga.run import Role

__all__ = ["Fault", "InjectedError", "Crashed", "KINDS", "POINTS"]

POINTS = ("before_effect", "after_effect", "before_commit", "after_commit")
KINDS = ("error", "nonretryable", "timeout", "crash")
# Where a kind may strike when none is named: a failure before the call, a timeout after
# the work was done (it overran its limit), a crash after the effect (the costliest).
DEFAULT_POINT = {"error": "before_effect", "nonretryable": "before_effect",
                 "timeout": "after_effect", "crash": "after_effect"}
WHAT = {"error": "a retryable error", "nonretryable": "a NonRetryable", "timeout": "a timeout",
        "crash": "a crash"}
WHERE = {"before_effect": "before {s} ran",
         "after_effect": "after {s} had its effect",
         "before_commit": "after {s} had its effect, before its outcome committed",
         "after_commit": "after {s}'s outcome committed, before what followed was published"}


class InjectedError(Exception):
    """A retryable failure injected by the saga test kit."""


class Crashed(BaseException):
    """The process running the attempt died here (the kit's worker stops, another takes over)."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: `kind` at point `at` of `step`'s `attempt` (None: every attempt).

        Fault.crash("reserve_car", at="before_commit")
        Fault.error("charge_card", attempt=None)        # every attempt: the retries run out
        Fault.timeout("release_hotel", compensate=True)  # the compensation's first attempt
    """

    kind: str
    step: str
    at: str = ""
    role: Role = Role.FORWARD
    attempt: int | None = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {', '.join(KINDS)}")
        at = self.at or DEFAULT_POINT[self.kind]
        allowed = POINTS if self.kind == "crash" else POINTS[:2]
        if at not in allowed:
            raise ValueError(f"a {self.kind} fault strikes at {' or '.join(allowed)}, not {at!r}")
        if self.attempt is not None and self.attempt < 1:
            raise ValueError(f"attempts count from 1, not {self.attempt}")
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "role", Role(self.role))

    @classmethod
    def error(cls, step: str, *, at: str = "", attempt: int | None = 1,
              compensate: bool = False) -> Fault:
        """The attempt raises a retryable error: the step's retry policy takes over."""
        return cls("error", step, at, _role(compensate), attempt)

    @classmethod
    def nonretryable(cls, step: str, *, at: str = "", attempt: int | None = 1,
                     compensate: bool = False) -> Fault:
        """The attempt raises `NonRetryable`: the step fails for good."""
        return cls("nonretryable", step, at, _role(compensate), attempt)

    @classmethod
    def timeout(cls, step: str, *, at: str = "", attempt: int | None = 1,
                compensate: bool = False) -> Fault:
        """The attempt overruns its time limit: the step's `on_timeout` applies."""
        return cls("timeout", step, at, _role(compensate), attempt)

    @classmethod
    def crash(cls, step: str, *, at: str = "", attempt: int | None = 1,
              compensate: bool = False) -> Fault:
        """The process running the attempt dies at `at`; its lease must run out."""
        return cls("crash", step, at, _role(compensate), attempt)

    def matches(self, step: str, role: Role, attempt: int | None, point: str) -> bool:
        return (step, role, point) == (self.step, self.role, self.at) and (
            self.attempt is None or self.attempt == attempt)

    def strike(self, attempt: int | None) -> None:
        """Raise what this fault raises in the attempt."""
        message = f"injected by the saga test kit: {self.describe(attempt)}"
        if self.kind == "crash":
            raise Crashed(message)
        if self.kind == "nonretryable":
            raise NonRetryable(message)
        if self.kind == "timeout":
            raise TimeoutError(message)  # the worker reads it as the step's time limit
        raise InjectedError(message)

    def describe(self, attempt: int | None = None) -> str:
        """`a crash after reserve_car had its effect (attempt 1)`."""
        subject = (f"the compensation of {self.step}" if self.role is Role.COMPENSATE
                   else self.step)
        n = attempt if attempt is not None else self.attempt
        which = "every attempt" if n is None else f"attempt {n}"
        return f"{WHAT[self.kind]} {WHERE[self.at].format(s=subject)} ({which})"

    def __str__(self) -> str:
        return self.describe()

    def code(self) -> str:
        """This fault as Python: `Fault.crash("reserve_car", at="after_effect")`."""
        args = [repr(self.step)]
        if self.at != DEFAULT_POINT[self.kind]:
            args.append(f"at={self.at!r}")
        if self.attempt != 1:
            args.append(f"attempt={self.attempt!r}")
        if self.role is Role.COMPENSATE:
            args.append("compensate=True")
        return f"Fault.{self.kind}({', '.join(args)})"


def _role(compensate: bool) -> Role:
    return Role.COMPENSATE if compensate else Role.FORWARD
