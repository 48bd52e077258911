"""Sagas used only by the tests, loaded by the real worker processes via SAGA_SAGAS."""

from __future__ import annotations

import os
import time
from pathlib import Path

from saga import Parallel, RemoteTask, Saga, Step, StepContext


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


# A step another service's worker runs (tests/remote_service.py), by task name.
remote = Saga("remote", steps=[
    Step("double", RemoteTask("remote_service.double", queue="saga-test-remote")),
    Step("check", join),
])
