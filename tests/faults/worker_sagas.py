"""Sagas for the worker fault tests (test_worker_faults.py), loaded by the real processes.

Effects go to the demo services (`examples.fulfillment.call`) under the step's idempotency
key, so `GET /demo/effects` and `tests.faults.invariants.check` count them per key; a run's
input carries the `order_id` they are filed under. Besides, each time a step's code gets as
far as its effect it appends one line to `executions.log` in SAGA_TEST_BARRIER_DIR (the
test's folder). That log is deliberately not idempotent: it shows whether a fenced-off or
killed attempt reached its effect at all.

Steps and tests talk through files in that folder:

- `started-<run>-<step>-<attempt>` holds the pid of the worker child running that attempt;
- in a worker started with SAGA_TEST_HOLD=1, the first attempt of a `hold` step waits for a
  file `release` (at most HOLD_MAX_S), so a test can freeze or kill a worker mid-step;
- `parked-<run>`: the first `slow_once` of a run creates it, then overruns its time limit.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from examples.fulfillment import call
from saga import Retry, Saga, Step, StepContext

HOLD_LEASE = timedelta(seconds=1.5)  # the lease (heartbeat_timeout) of the steps a test freezes
HOLD_MAX_S = 30.0  # a held or hanging attempt gives up waiting after this, whatever happens
# The start-to-close limit of `stubborn` and `slow_once`. It covers the whole task (claim,
# action, commit), so a later attempt on a fresh pool child of a loaded machine must fit.
STEP_TIMEOUT = timedelta(seconds=3)
EXECUTIONS = "executions.log"


def folder() -> Path:
    return Path(os.environ["SAGA_TEST_BARRIER_DIR"])


def started(ctx: StepContext) -> None:
    """Tell the test which worker child runs this attempt (written atomically)."""
    name = f"started-{ctx.run_id}-{ctx.step}-{ctx.attempt}"
    tmp = folder() / f".{name}.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    tmp.rename(folder() / name)


def executed(ctx: StepContext) -> None:
    """One line per time a step's code reaches its effect; one write, so lines never mix."""
    line = f"{ctx.idempotency_key} attempt={ctx.attempt} pid={os.getpid()}\n".encode()
    fd = os.open(folder() / EXECUTIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _order(ctx: StepContext) -> str:
    return ctx.input["order_id"]


# -- effects, through the demo services --------------------------------------------------

def reserve(ctx: StepContext) -> dict[str, Any]:
    executed(ctx)
    return call(ctx, "/demo/inventory/reserve",
                {"order_id": _order(ctx), "items": [{"sku": "sku-1", "qty": 1}]})


def release(ctx: StepContext) -> dict[str, Any]:
    executed(ctx)
    return call(ctx, "/demo/inventory/release", {"order_id": _order(ctx)})


def charge(ctx: StepContext) -> dict[str, Any]:
    executed(ctx)
    return call(ctx, "/demo/payment/charge",
                {"order_id": _order(ctx), "amount_cents": 500, "card": "ok"})


def ship(ctx: StepContext) -> dict[str, Any]:
    executed(ctx)
    return call(ctx, "/demo/shipping/create", {"order_id": _order(ctx), "address": "1 Main St"})


def cancel(ctx: StepContext) -> dict[str, Any]:
    executed(ctx)
    return call(ctx, "/demo/shipping/cancel", {"order_id": _order(ctx)})


# -- misbehaving steps --------------------------------------------------------------------

def hold(ctx: StepContext) -> dict[str, Any]:
    """Charge; in a SAGA_TEST_HOLD worker, the first attempt waits for `release` first."""
    started(ctx)
    if os.environ.get("SAGA_TEST_HOLD") and ctx.attempt == 1:
        deadline = time.monotonic() + HOLD_MAX_S
        while not (folder() / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    ctx.heartbeat()  # an attempt that lost its lease while frozen stops here, before its effect
    return charge(ctx)


def stubborn(ctx: StepContext) -> dict[str, Any]:
    """The first attempt hangs: it swallows the soft time limit and waits to be killed."""
    started(ctx)
    if ctx.attempt == 1:
        deadline = time.monotonic() + HOLD_MAX_S
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                (folder() / f"soft-limit-{ctx.run_id}").touch()
    return charge(ctx)


def slow_once(ctx: StepContext) -> dict[str, Any]:
    """The first attempt in a run overruns its time limit; later ones charge at once."""
    started(ctx)
    marker = folder() / f"parked-{ctx.run_id}"
    if not marker.exists():
        marker.touch()
        time.sleep(HOLD_MAX_S)  # the soft time limit interrupts this
    return charge(ctx)


def poison(ctx: StepContext) -> dict[str, Any]:
    """Kill the worker child running it, on every attempt."""
    started(ctx)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def die_once(ctx: StepContext) -> dict[str, Any]:
    """Kill the worker child running the first attempt; later attempts charge."""
    started(ctx)
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return charge(ctx)


class Hiccup(Exception):
    """A passing failure, worth another attempt."""


def tick(ctx: StepContext) -> dict[str, Any]:
    """Fail the first attempt, so every run waits for a retry that falls due at one time."""
    if ctx.attempt == 1:
        raise Hiccup("the first attempt fails")
    return {"attempt": ctx.attempt}


# -- the sagas ----------------------------------------------------------------------------

NOW = timedelta(0)

held_order = Saga("held_order", steps=[
    Step("reserve", reserve, compensate=release),
    Step("hold", hold, heartbeat_timeout=HOLD_LEASE, retry=Retry(attempts=3, first_delay=NOW)),
    Step("ship", ship, compensate=cancel),
])


def _hanging(name: str, on_timeout: str) -> Saga:
    return Saga(name, steps=[
        Step("reserve", reserve, compensate=release),
        Step("stubborn", stubborn, timeout=STEP_TIMEOUT, heartbeat_timeout=HOLD_LEASE,
             retry=Retry(attempts=2, first_delay=NOW), on_timeout=on_timeout),
    ])


hang_then_retry = _hanging("hang_then_retry", "retry")
hang_then_compensate = _hanging("hang_then_compensate", "compensate")

park_on_timeout = Saga("park_on_timeout", steps=[
    Step("reserve", reserve, compensate=release),
    Step("slow_once", slow_once, timeout=STEP_TIMEOUT, on_timeout="park"),
])

poison_pill = Saga("poison_pill", steps=[
    Step("reserve", reserve, compensate=release),
    Step("poison", poison, heartbeat_timeout=timedelta(seconds=1),
         retry=Retry(attempts=3, first_delay=NOW)),
])

retry_storm = Saga("retry_storm", steps=[
    Step("tick", tick, retry=Retry(attempts=3, first_delay=timedelta(seconds=1), jitter=0)),
    Step("reserve", reserve, compensate=release),
    Step("hold", hold, heartbeat_timeout=HOLD_LEASE,
         retry=Retry(attempts=3, first_delay=timedelta(milliseconds=500), jitter=0)),
])


# A worker dying mid-attempt of a step whose timeouts park: the expired lease must park it.
die_then_park = Saga("die_then_park", steps=[
    Step("reserve", reserve, compensate=release),
    Step("fragile", die_once, heartbeat_timeout=timedelta(seconds=1), on_timeout="park",
         retry=Retry(attempts=3, first_delay=NOW)),
])
