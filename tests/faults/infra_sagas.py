"""Sagas for the fault tests, loaded by the real processes through SAGA_SAGAS.

They reuse the demo services of `examples.fulfillment` (so every effect lands in the demo
effect log that `invariants.check` reads), but not its saga, which evolves with the demo:
the processes load only this module (`init_app` mounts the demo services on the API).
They add what a fault test needs to control:

- a gate: a step that holds its slot (heartbeating) until the test creates a file, so a
  fault can be injected while runs are provably mid-flight;
- retries and compensations that fail a set number of times, counted in files in the
  test's folder (SAGA_TEST_BARRIER_DIR), independently of the engine's own attempt count.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from examples.fulfillment import (
    QUICK_RETRY,
    OrderSchema,
    ServiceUnavailable,
    cancel_shipment,
    charge_card,
    create_shipment,
    email_warehouse,
    init_app,  # noqa: F401  (re-exported: the API mounts the demo services through it)
    refund_card,
    release_inventory,
    reserve_inventory,
    validate_order,
)
from saga import NonRetryable, Parallel, Retry, Saga, Step, StepContext

GATE_TIMEOUT_S = 60.0
HEARTBEAT_EVERY_S = 0.5


def folder() -> Path:
    return Path(os.environ["SAGA_TEST_BARRIER_DIR"])


def gate(name: str) -> Path:
    """The file that opens gate `name` (the test creates it)."""
    return folder() / f"gate-{name}"


def executions(name: str) -> Path:
    """The file listing each execution of a counted action, one line each."""
    return folder() / f"executions-{name}"


def wait_at_gate(ctx: StepContext, name: str) -> None:
    """Hold this attempt until the test opens the gate; heartbeat meanwhile, as long work must.

    `ctx.heartbeat()` raises LeaseLost once the lease is gone (another worker owns the step,
    or the database was away for a whole lease): the attempt stops before doing its effect.
    """
    deadline = time.monotonic() + GATE_TIMEOUT_S
    last_beat = time.monotonic()
    while not gate(name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {name!r} was never opened")
        if time.monotonic() - last_beat > HEARTBEAT_EVERY_S:
            ctx.heartbeat()
            last_beat = time.monotonic()
        time.sleep(0.01)


def count_execution(ctx: StepContext) -> int:
    """Append one line for this execution; return how many executions there were so far."""
    path = executions(f"{ctx.run_id}-{ctx.step}-{ctx.role}")
    with open(path, "a") as f:  # O_APPEND: a short line is written atomically
        f.write(f"{ctx.attempt} {ctx.fence}\n")
    return len(path.read_text().splitlines())


# -- infrastructure faults -------------------------------------------------------------

# The demo's order saga as these tests pin it: validate → reserve → charge → (ship ‖ email).
fault_order = Saga("fault_order", version=1, input=OrderSchema, steps=[
    Step("validate_order", validate_order),
    Step("reserve_inventory", reserve_inventory, compensate=release_inventory, retry=QUICK_RETRY),
    Step("charge_card", charge_card, compensate=refund_card, retry=QUICK_RETRY),
    Parallel(
        Step("create_shipment", create_shipment, compensate=cancel_shipment, retry=QUICK_RETRY),
        Step("email_warehouse", email_warehouse),
    ),
])

def charge_at_gate(ctx: StepContext) -> dict:
    """Charge the card once the test opens the "charge" gate."""
    wait_at_gate(ctx, "charge")
    return charge_card(ctx)


# The fulfillment saga with the charge held at a gate: runs stop there mid-flight.
gated_order = Saga("gated_order", version=1, input=OrderSchema, steps=[
    Step("validate_order", validate_order),
    Step("reserve_inventory", reserve_inventory, compensate=release_inventory, retry=QUICK_RETRY),
    Step("charge_card", charge_at_gate, compensate=refund_card, retry=QUICK_RETRY),
    Parallel(
        Step("create_shipment", create_shipment, compensate=cancel_shipment, retry=QUICK_RETRY),
        Step("email_warehouse", email_warehouse),
    ),
])

SLOW_BACKOFF_S = 4.0
SLOW_BACKOFF = Retry(attempts=3, first_delay=timedelta(seconds=SLOW_BACKOFF_S), multiplier=1,
                     jitter=0, non_retryable=(NonRetryable,))


def charge_after_one_failure(ctx: StepContext) -> dict:
    """The payment gateway is down on the first attempt only."""
    count_execution(ctx)
    if ctx.attempt == 1:
        raise ServiceUnavailable("the payment gateway is down on the first attempt")
    return charge_card(ctx)


# A retry whose backoff (4 s) outlasts the broker's redelivery timeout in the test (2 s).
slow_retry_order = Saga("slow_retry_order", version=1, input=OrderSchema, steps=[
    Step("reserve_inventory", reserve_inventory, compensate=release_inventory, retry=QUICK_RETRY),
    Step("charge_card", charge_after_one_failure, compensate=refund_card, retry=SLOW_BACKOFF),
    Step("create_shipment", create_shipment, compensate=cancel_shipment, retry=QUICK_RETRY),
])


# -- saga semantics --------------------------------------------------------------------

UNDO_RETRY = Retry(attempts=5, first_delay=timedelta(milliseconds=200), multiplier=1, jitter=0)
STUCK_UNDO_RETRY = Retry(attempts=3, first_delay=timedelta(milliseconds=100), multiplier=1,
                         jitter=0)
UNDO_FAILURES = 2
UNDO_FIXED = "undo-fixed"


def refuse(ctx: StepContext) -> dict:
    raise NonRetryable("refused on purpose, so that the earlier steps are undone")


def release_failing_twice(ctx: StepContext) -> dict:
    """The inventory service fails the first two releases, then releases."""
    n = count_execution(ctx)
    if n <= UNDO_FAILURES:
        raise ServiceUnavailable(f"release execution {n} fails on purpose")
    return release_inventory(ctx)


def release_once_fixed(ctx: StepContext) -> dict:
    """Releases fail until a person fixes the cause (the test creates the UNDO_FIXED file)."""
    count_execution(ctx)
    if not (folder() / UNDO_FIXED).exists():
        raise ServiceUnavailable("the inventory service refuses releases until fixed")
    return release_inventory(ctx)


flaky_undo = Saga("flaky_undo", version=1, steps=[
    Step("reserve_inventory", reserve_inventory, compensate=release_failing_twice,
         compensate_retry=UNDO_RETRY),
    Step("refuse", refuse),
])

stuck_undo = Saga("stuck_undo", version=1, steps=[
    Step("reserve_inventory", reserve_inventory, compensate=release_once_fixed,
         compensate_retry=STUCK_UNDO_RETRY),
    Step("refuse", refuse),
])


def ship_at_gate(ctx: StepContext) -> dict:
    """Create the shipment once the test opens this run's "ship" gate."""
    wait_at_gate(ctx, f"ship-{ctx.run_id}")
    return create_shipment(ctx)


def charge_at_run_gate(ctx: StepContext) -> dict:
    """Charge the card once the test opens this run's "charge" gate."""
    wait_at_gate(ctx, f"charge-{ctx.run_id}")
    return charge_card(ctx)


# A parallel pair where charge_card (card "declined") fails while create_shipment still
# runs: each is held at a gate of its own, so the test decides the order.
parallel_undo = Saga("parallel_undo", version=1, input=OrderSchema, steps=[
    Step("reserve_inventory", reserve_inventory, compensate=release_inventory, retry=QUICK_RETRY),
    Parallel(
        Step("create_shipment", ship_at_gate, compensate=cancel_shipment, retry=QUICK_RETRY),
        Step("charge_card", charge_at_run_gate, compensate=refund_card, retry=QUICK_RETRY),
    ),
    Step("email_warehouse", email_warehouse),
])
