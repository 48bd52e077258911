"""Sagas used only by the tests, loaded by the real worker processes via SAGA_SAGAS."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from saga import Parallel, RemoteTask, Saga, Step, StepContext, Wait, WaitForSignal


def arrive_and_wait(ctx: StepContext) -> dict:
    """Both members of the group finish together: each waits until the other arrived."""
    folder = Path(os.environ["SAGA_TEST_BARRIER_DIR"])
    (folder / f"{ctx.run_id}-{ctx.step}").touch()
    deadline = time.monotonic() + 30
    while len(list(folder.glob(f"{ctx.run_id}-*"))) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the other member of the group never arrived")
        time.sleep(0.001)
    return {"step": ctx.step}


def join(ctx: StepContext) -> dict:
    return {"saw": sorted(ctx.outputs)}


barrier = Saga("barrier", steps=[
    Parallel(Step("left", arrive_and_wait), Step("right", arrive_and_wait)),
    Step("join", join),
])


# A step another service's worker runs (tests/remote_service.py), by task name, on the
# queue the test names (the broker is shared: a fixed name could be another run's).
REMOTE_QUEUE = os.environ.get("SAGA_TEST_REMOTE_QUEUE", "saga-test-remote")
remote = Saga("remote", steps=[
    Step("double", RemoteTask("remote_service.double", queue=REMOTE_QUEUE)),
    Step("check", join),
])


def record(ctx: StepContext) -> dict:
    return {"step": ctx.step, "outputs": sorted(ctx.outputs)}


def hold(ctx: StepContext) -> dict:
    """Runs until the test creates `release-<run>-<step>-<role>` (mid-step on purpose)."""
    folder = Path(os.environ["SAGA_TEST_BARRIER_DIR"])
    (folder / f"holding-{ctx.run_id}-{ctx.step}-{ctx.role}").touch()
    deadline = time.monotonic() + 60
    while not (folder / f"release-{ctx.run_id}-{ctx.step}-{ctx.role}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        ctx.heartbeat()
        time.sleep(0.01)
    return {"held": ctx.step}


# A durable timer of an hour between two steps (tests move the clock, they do not wait).
napping = Saga("napping", steps=[
    Step("before", record, compensate=record),
    Wait("nap", duration=timedelta(hours=1)),
    Step("after", record),
])

# A label that may come before or after the run reaches its wait, within two days.
labelled = Saga("labelled", steps=[
    Step("reserve", record, compensate=record),
    Wait("cool_off", duration=timedelta(minutes=20)),
    WaitForSignal("label", timeout=timedelta(days=2)),
    Step("notify", record),
])

# On timeout, go on down the declared path: the next step sees {"timed_out": true}.
patient = Saga("patient", steps=[
    Step("reserve", record, compensate=record),
    WaitForSignal("label", timeout=timedelta(days=2), on_timeout="continue"),
    Step("notify", record),
])

# A step (or compensation) that holds until released, to cancel mid-step.
holding = Saga("holding", steps=[
    Step("first", record, compensate=hold),
    Step("second", hold, compensate=record),
    Step("third", record),
])
