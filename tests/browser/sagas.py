"""A saga for the browser tests, loaded by the real processes via SAGA_SAGAS: an order whose
card is declined and whose stock release gives up until the warehouse is back, so the run
ends `failed` and a retry from the console can finish it."""

from __future__ import annotations

import os
from pathlib import Path

from saga import NonRetryable, Retry, Saga, Step, StepContext


def warehouse_back(folder: Path, run_id: str) -> Path:
    """The file (in the stack's SAGA_TEST_BARRIER_DIR) that tells `release_stock` the
    warehouse answers again, for one run."""
    return folder / f"warehouse-back-{run_id}"


def hold_stock(ctx: StepContext) -> dict:
    return {"held": ctx.input["order_id"]}


def release_stock(ctx: StepContext) -> dict:
    if not warehouse_back(Path(os.environ["SAGA_TEST_BARRIER_DIR"]), ctx.run_id).exists():
        raise RuntimeError("warehouse API gone")
    return {"released": ctx.input["order_id"]}


def charge(ctx: StepContext) -> dict:
    raise NonRetryable("card declined")


# One attempt for the release: it gives up at once, so the run ends `failed`.
brittle_order = Saga("brittle_order", steps=[
    Step("hold_stock", hold_stock, compensate=release_stock, compensate_retry=Retry(attempts=1)),
    Step("charge", charge),
])
