"""What a step's code is given: its run, attempt, fence, idempotency key, input, and a heartbeat."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saga.errors import SagaError

log = logging.getLogger("saga.worker")


class LeaseLost(SagaError):
    """This attempt lost its lease: another worker owns the step now. Stop at once."""


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
    kind: str
    attempt: int
    fence: int
    input: Any
    outputs: dict[str, Any]
    saga: str = ""
    version: int = 1
    _beat: Callable[[], bool] = field(default=lambda: True, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.step}:{self.kind}"

    @property
    def compensating(self) -> bool:
        return self.kind == "compensate"

    def heartbeat(self) -> None:
        """Extend the lease now; raises LeaseLost if another worker took the step over."""
        if not self._beat():
            raise LeaseLost(f"step {self.step!r} of run {self.run_id} was taken over")


class Heartbeat:
    """A thread renewing one lease every `lease_s / 3` until stopped or fenced off."""

    def __init__(self, renew: Callable[[], bool], lease_s: float) -> None:
        self._renew = renew
        self._interval = max(lease_s / 3, 0.05)
        self._lease_s = lease_s
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="saga-heartbeat", daemon=True)
        self._last_ok = time.monotonic()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> bool:
        if self.lost.is_set():
            return False
        try:
            alive = self._renew()
        except Exception as exc:  # the database may be away for a moment; the lease says how long
            log.warning("heartbeat failed: %s", exc)
            alive = time.monotonic() - self._last_ok < self._lease_s
        else:
            self._last_ok = time.monotonic()
        if not alive:
            self.lost.set()
        return alive

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            if not self.beat():
                log.warning("lease lost; this attempt's result will be discarded")
                return
