"""Steps in doubt on real processes: a worker child killed mid-charge, then the step's check.

Real `saga api` / `saga worker` / `saga sweeper` processes on a fresh PostgreSQL database
and a real broker (RabbitMQ and Redis, by the `broker_url` fixture). Three runs of
`tests.faults.verify_sagas.verified_charge` have their first charge attempt's worker child
SIGKILLed: after the charge, before it, and before it with a check that cannot tell. Once
each dead lease has expired, the next attempt asks the check first: done records the
charge without charging again, not done charges once, unknown parks the run until a
person retries it. Durations are printed (run with `-s`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from saga.registry import Registry
from tests.faults import invariants
from tests.faults.test_worker_faults import (
    broker,
    events,
    executions,
    new_order,
    start,
    step_of,
)
from tests.faults.verify_sagas import CHECKS
from tests.stack import Stack, wait_for

SAGAS = "examples.fulfillment,tests.faults.verify_sagas"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_modules(SAGAS.split(","))


@pytest.fixture
def stack(database_url: str, broker_url: str, tmp_path: Path) -> Any:
    """The processes of one test, loading the sagas above; killed at the end (nothing is
    left to shut down gracefully)."""
    with Stack(database_url, broker_url, tmp_path, sagas=SAGAS) as running:
        try:
            yield running
        finally:
            for process in running.processes:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def checks(stack: Stack, key: str) -> list[str]:
    """`attempt=N answer=A` for each time the check ran for this key."""
    path = stack.folder / CHECKS
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == key]


def charges(stack: Stack, order_id: str) -> list[str]:
    return [key for action, key in stack.effects(order_id) if action == "charge"]


def test_a_killed_charge_is_verified_before_it_is_tried_again(stack: Stack,
                                                             registry: Registry) -> None:
    """Given three runs whose first charge attempt's worker child is SIGKILLed (after the
    charge; before it; before it, with a check that cannot tell),
    when each dead lease expires and the step's next attempt runs,
    then it asks the check first: the charge that went through is recorded from the check
    and not made again, the one that never happened is made once, and the unknown one is
    parked, nothing undone, until a person retries it; then it is checked again and charged
    once."""
    start(stack, dict(concurrency=3))
    began = time.monotonic()
    orders = {name: new_order() for name in ("done", "not_done", "unknown")}
    inputs = {"done": {"die": "after"}, "not_done": {"die": "before"},
              "unknown": {"die": "before", "check": "unknown"}}
    runs = {name: stack.post_run("verified_charge", {"order_id": orders[name], **inputs[name]})
            for name in orders}
    keys = {name: f"{run_id}:charge:forward" for name, run_id in runs.items()}

    done = {name: stack.wait_terminal(runs[name], 30) for name in ("done", "not_done")}
    parked = wait_for(lambda: (found := stack.run(runs["unknown"]))["parked"] and found, 30,
                      "the unknown run to be parked")
    settled = time.monotonic() - began

    # Done: the check found the charge of the killed attempt; the code never ran again.
    charge = step_of(done["done"], "charge")
    assert (done["done"]["status"], charge["attempts"]) == ("succeeded", 2), done["done"]
    [charged] = charges(stack, orders["done"])
    assert charge["output"] == {"charge_id": charge["output"]["charge_id"], "amount_cents": 500}
    assert [line.split()[1] for line in executions(stack, keys["done"])] == ["attempt=1"]
    assert checks(stack, keys["done"]) == ["attempt=2 answer=done"]

    # Not done: the killed attempt never charged; the next one checked, then charged once.
    assert done["not_done"]["status"] == "succeeded", done["not_done"]
    assert len(charges(stack, orders["not_done"])) == 1
    assert [line.split()[1] for line in executions(stack, keys["not_done"])] == ["attempt=2"]
    assert checks(stack, keys["not_done"]) == ["attempt=2 answer=not_done"]
    history = [(e.type, e.attempt) for e in events(stack, runs["not_done"], "charge")]
    assert history[-3:] == [("step.running", 2), ("step.checked", 2), ("step.succeeded", 2)]

    # Unknown: parked for a person, nothing charged and nothing undone.
    assert parked["status"] == "running" and "verify cannot tell" in parked["parked"]
    assert step_of(parked, "charge")["status"] == "parked"
    assert [a for a, _ in stack.effects(orders["unknown"])] == ["reserve"]
    assert events(stack, runs["unknown"], "charge", "alert.parked")
    print(f"[{broker(stack)}] three killed charges settled {settled:.2f}s after the start")

    # The person finds out and retries: the check asks the service again, and it charges.
    (stack.folder / f"known-{runs['unknown']}").touch()
    response = stack.http.post(f"{stack.base}/v1/runs/{runs['unknown']}/retry", timeout=10)
    assert response.status_code == 200, response.text
    resumed = stack.wait_terminal(runs["unknown"], 30)
    assert resumed["status"] == "succeeded", resumed
    assert checks(stack, keys["unknown"]) == ["attempt=2 answer=unknown",
                                              "attempt=1 answer=not_done"]
    assert len(charges(stack, orders["unknown"])) == 1
    invariants.check(stack, list(runs.values()), registry)


def test_past_the_pivot_a_step_that_cannot_succeed_parks_the_run_and_nothing_is_undone(
        stack: Stack, registry: Registry) -> None:
    """Given a run past its pivot (the charge), whose next step's worker child is SIGKILLed
    and which then refuses for good (NonRetryable),
    then the run is parked for a person, not compensated: the reservation is kept, nothing
    is refunded, and a cancel is refused as past the pivot; once the cause is fixed, a retry
    finishes the run."""
    start(stack, dict(concurrency=2))
    order_id = new_order()
    run_id = stack.post_run("pivoted_order", {"order_id": order_id})
    parked = wait_for(lambda: (found := stack.run(run_id))["parked"] and found, 30,
                      "the run to be parked past its pivot")
    assert parked["status"] == "running" and parked["compensations"] == [], parked
    assert step_of(parked, "charge")["status"] == "succeeded"
    assert step_of(parked, "ship")["status"] == "parked"
    assert (stack.folder / f"ship-died-{run_id}").exists()  # the kill really happened
    assert [a for a, _ in stack.effects(order_id)] == ["reserve", "charge"]  # nothing undone

    refused = stack.http.post(f"{stack.base}/v1/runs/{run_id}/cancel", timeout=10)
    assert refused.status_code == 409 and "past-pivot" in refused.json()["type"], refused.text

    (stack.folder / f"ship-ok-{run_id}").touch()
    response = stack.http.post(f"{stack.base}/v1/runs/{run_id}/retry", timeout=10)
    assert response.status_code == 200, response.text
    finished = stack.wait_terminal(run_id, 30)
    assert finished["status"] == "succeeded", finished
    assert [a for a, _ in stack.effects(order_id)] == ["reserve", "charge", "ship"]
    invariants.check(stack, [run_id], registry)


def test_a_failed_step_is_undone_by_default_and_left_alone_with_compensate_failed_false(
        stack: Stack, registry: Registry) -> None:
    start(stack, dict(concurrency=2))
    runs = {name: stack.post_run(name, {"order_id": new_order()})
            for name in ("declined_default", "declined_kept")}
    for name, run_id in runs.items():
        finished = stack.wait_terminal(run_id, 30)
        assert finished["status"] == "compensated", finished
        undone = [c["name"] for c in finished["compensations"] if c["status"] == "succeeded"]
        voids = executions(stack, f"{run_id}:charge:compensate")
        if name == "declined_default":
            assert undone == ["charge", "reserve"] and len(voids) == 1, finished
        else:
            assert undone == ["reserve"] and voids == [], finished
    invariants.check(stack, list(runs.values()), registry)
