"""What a step's code is given: its run, attempt, fence, idempotency key, input, and a heartbeat."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saga.errors import LeaseLost


@dataclass
class StepContext:
    """The one argument a step action receives.

    `idempotency_key` is stable across attempts of one (run, step) and differs between
    the forward action and its compensation; pass it to the services you call. `fence`
    grows with every attempt, so a service can also reject a stale writer.

        def charge(ctx):
            return payments.charge(ctx.input["amount_cents"], key=ctx.idempotency_key)
    """

    run_id: str
    step: str
    role: str  # "forward", or "compensate" when this call undoes the step
    attempt: int
    fence: int
    input: Any
    outputs: dict[str, Any]
    saga: str = ""
    version: int = 1
    _beat: Callable[[], bool] = field(default=lambda: True, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.step}:{self.role}"

    @property
    def compensating(self) -> bool:
        return self.role == "compensate"

    def heartbeat(self) -> None:
        """Extend the lease now; raises LeaseLost if another worker took the step over."""
        if not self._beat():
            raise LeaseLost(f"step {self.step!r} of run {self.run_id} was taken over")
