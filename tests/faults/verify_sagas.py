"""Sagas for the in-doubt fault tests (test_verify_faults.py), loaded by the real processes.

`verified_charge` charges through the demo payment service under the step's idempotency
key, and its `verify` check looks that charge up in the service's effects. The run's input
says how its first `charge` attempt ends: `"die": "before"` or `"after"` SIGKILLs the
worker child before or after the charge (once per run: a file `died-<run>` in the test's
folder remembers it). `"check": "unknown"` makes the check answer unknown until the test
creates `known-<run>`. Each check appends one line to `checks.log` (key, attempt,
answer); the charge's code appends to `executions.log` as in worker_sagas.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from typing import Any

from examples.fulfillment import DEFAULT_SERVICES_URL
from saga import NonRetryable, Retry, Saga, Step, StepContext, Verified
from tests.faults.worker_sagas import charge, executed, folder, release, reserve, ship, started

LEASE = timedelta(seconds=1)  # the charge's heartbeat_timeout: a dead child's lease runs out
CHECKS = "checks.log"


def charge_or_die(ctx: StepContext) -> dict[str, Any]:
    started(ctx)
    die = ctx.input.get("die")
    marker = folder() / f"died-{ctx.run_id}"
    if die == "before" and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    output = charge(ctx)
    if die == "after" and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return output


def charged(ctx: StepContext) -> Verified:
    """Look the charge up by the forward call's key in the payment service's effects."""
    if ctx.input.get("check") == "unknown" and not (folder() / f"known-{ctx.run_id}").exists():
        answer = Verified.unknown()
    else:
        base = os.environ.get("SAGA_DEMO_SERVICES_URL") or DEFAULT_SERVICES_URL
        response = ctx.http.get(f"{base}/demo/effects",
                                params={"order_id": ctx.input["order_id"]}, timeout=10)
        response.raise_for_status()
        found = [e for e in response.json()["effects"]
                 if e["action"] == "charge" and e["idempotency_key"] == ctx.idempotency_key]
        answer = (Verified.done({"charge_id": f"ch-{found[0]['id']}",
                                 "amount_cents": found[0]["amount_cents"]})
                  if found else Verified.not_done())
    line = f"{ctx.idempotency_key} attempt={ctx.attempt} answer={answer.answer}\n".encode()
    fd = os.open(folder() / CHECKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return answer


verified_charge = Saga("verified_charge", steps=[
    Step("reserve", reserve, compensate=release),
    Step("charge", charge_or_die, verify=charged, heartbeat_timeout=LEASE,
         retry=Retry(attempts=3, first_delay=timedelta(0))),
])


def ship_or_die(ctx: StepContext) -> dict[str, Any]:
    """Past the pivot: dies once (SIGKILL after starting), then refuses for good until the
    test creates `ship-ok-<run>` (a person fixed the address)."""
    started(ctx)
    marker = folder() / f"ship-died-{ctx.run_id}"
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if not (folder() / f"ship-ok-{ctx.run_id}").exists():
        raise NonRetryable("no carrier delivers to this address")
    return ship(ctx)


# Once the charge (the pivot) succeeded, nothing before it may be undone.
pivoted_order = Saga("pivoted_order", steps=[
    Step("reserve", reserve, compensate=release),
    Step("charge", charge, pivot=True),
    Step("ship", ship_or_die, heartbeat_timeout=LEASE,
         retry=Retry(attempts=3, first_delay=timedelta(0))),
])


def decline(ctx: StepContext) -> dict[str, Any]:
    raise NonRetryable("card declined")


def void_charge(ctx: StepContext) -> dict[str, Any]:
    executed(ctx)  # the test counts these lines: an undo of a charge that never happened
    return {"voided": ctx.forward_key}


# A declined charge: undone anyway by default (a failed call may have had its effect), or
# left alone with compensate_failed=False.
declined_default = Saga("declined_default", steps=[
    Step("reserve", reserve, compensate=release),
    Step("charge", decline, compensate=void_charge),
])
declined_kept = Saga("declined_kept", steps=[
    Step("reserve", reserve, compensate=release),
    Step("charge", decline, compensate=void_charge, compensate_failed=False),
])
