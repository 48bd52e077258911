"""Saga semantics under failure, with real processes on RabbitMQ and on Redis: compensations
that fail and then succeed, compensations that fail until a person fixes the cause and
retries the run (API and CLI), and a parallel branch failing while its sibling still runs.

Durations are printed like the recovery times of test_infra_faults (run with `-s`).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from typing import Any

from tests.faults import invariants
from tests.faults.infra_sagas import UNDO_FAILURES, UNDO_FIXED
from tests.faults.test_infra_faults import (  # noqa: F401  (stack: the shared fixture)
    REGISTRY,
    actions,
    event_count,
    new_order,
    report,
    stack,
    start,
    step,
)
from tests.stack import ROOT, Stack, wait_for


def reservation() -> dict[str, Any]:
    return {"order_id": f"o-{uuid.uuid4().hex[:8]}", "items": [{"sku": "sku-1", "qty": 1}]}


def executions(stack: Stack, run_id: str, step_name: str, role: str = "compensate") -> int:
    path = stack.folder / f"executions-{run_id}-{step_name}-{role}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def events(stack: Stack, run_id: str) -> list[tuple[int, str, str | None]]:
    return [tuple(r) for r in stack.query(
        "SELECT id, type, step FROM events WHERE run_id = :r ORDER BY id", r=run_id)]


def first(history: list[tuple[int, str, str | None]], type: str, step_name: str) -> int:
    return next(i for i, t, s in history if t == type and s == step_name)


def last(history: list[tuple[int, str, str | None]], type: str, step_name: str) -> int:
    return max(i for i, t, s in history if t == type and s == step_name)


# -- 11. compensations that fail ------------------------------------------------------------

def test_compensation_failing_twice_then_succeeding_compensates_the_run(stack: Stack) -> None:
    """Given a saga whose reserve_inventory compensation fails on its first two attempts,
    When the step after it fails for good,
    Then the sweeper retries the release until it succeeds on the third attempt: the run ends
    compensated, with three compensation attempts, three executions and one release.
    """
    start(stack)
    order = reservation()
    started = time.monotonic()
    run_id = stack.post_run("flaky_undo", order)
    run = stack.wait_terminal(run_id, 30)
    took = time.monotonic() - started

    assert run["status"] == "compensated", run
    [undo] = run["compensations"]
    assert (undo["name"], undo["status"], undo["attempts"]) == (
        "reserve_inventory", "succeeded", UNDO_FAILURES + 1)
    assert executions(stack, run_id, "reserve_inventory") == UNDO_FAILURES + 1
    assert event_count(stack, run_id, "compensation.retry_wait") == UNDO_FAILURES
    assert actions(stack, order["order_id"]) == ["reserve", "release"]
    invariants.check(stack, [run_id], REGISTRY)
    report(stack, "compensation failing twice", start_to_compensated=took)


def test_compensation_failing_for_good_flags_the_run_until_retried_by_api_or_cli(
        stack: Stack) -> None:
    """Given a saga whose compensation fails until its cause is fixed, and two runs of it,
    When both exhaust the compensation's three attempts,
    Then both end failed, flagged with an error naming the compensation and an alert; once the
    cause is fixed, one resumed by POST /v1/runs/<id>/retry and the other by `saga retry <id>`
    both end compensated, each releasing the inventory once.
    """
    start(stack)
    orders = [reservation(), reservation()]
    by_api, by_cli = run_ids = [stack.post_run("stuck_undo", o) for o in orders]
    for run_id in run_ids:
        run = stack.wait_terminal(run_id, 30)
        assert run["status"] == "failed", run
        assert "compensation of 'reserve_inventory' failed" in run["error"], run["error"]
        assert "ServiceUnavailable" in run["error"], run["error"]
        [undo] = run["compensations"]
        assert (undo["status"], undo["attempts"]) == ("failed", 3)
        assert executions(stack, run_id, "reserve_inventory") == 3
        assert event_count(stack, run_id, "alert.failed") == 1
    for order in orders:
        assert actions(stack, order["order_id"]) == ["reserve"]

    (stack.folder / UNDO_FIXED).touch()
    fixed = time.monotonic()
    response = stack.http.post(f"{stack.base}/v1/runs/{by_api}/retry", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "compensating"
    cli = subprocess.run([sys.executable, "-m", "saga.cli", "retry", by_cli], env=stack.env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert f"run {by_cli} resumed" in cli.stdout, cli.stdout
    for run_id in run_ids:
        run = stack.wait_terminal(run_id, 30)
        assert run["status"] == "compensated", run
        assert run["compensations"][0]["attempts"] == 1  # a fresh budget; it worked at once
        assert executions(stack, run_id, "reserve_inventory") == 4
    resumed = time.monotonic() - fixed
    for order in orders:
        assert actions(stack, order["order_id"]) == ["reserve", "release"]
    again = stack.http.post(f"{stack.base}/v1/runs/{by_api}/retry", timeout=10)
    assert again.status_code == 409
    assert again.headers["Content-Type"].startswith("application/problem+json")
    invariants.check(stack, run_ids, REGISTRY)
    report(stack, "compensation failing for good, retried by API and CLI",
           fix_to_both_compensated=resumed)


# -- 12. a parallel branch failing while its sibling runs -------------------------------

def test_parallel_branch_failing_while_its_sibling_runs_undoes_both_then_the_earlier_step(
        stack: Stack) -> None:
    """Given reserve_inventory, then charge_card ‖ create_shipment, both running (held at
    gates), with the card declined,
    When the charge is let through and fails while the shipment still runs, and only once
    that failure is recorded the shipment is let through,
    Then the shipment settles (ships) before its undo starts, both branches are undone, and
    the inventory is released last: compensated, one undo per effect, in reverse order.
    """
    start(stack)
    order = new_order(card="declined")
    run_id = stack.post_run("parallel_undo", order)
    wait_for(lambda: all((s := step(stack, run_id, name)) is not None and s.status == "running"
                         for name in ("create_shipment", "charge_card")), 30,
             "both branches to be running")
    (stack.folder / f"gate-charge-{run_id}").touch()
    wait_for(lambda: (s := step(stack, run_id, "charge_card")) is not None
             and s.status == "failed", 30, "the charge to fail")
    assert stack.run(run_id)["status"] == "compensating"
    # The earlier step's undo waits for the running sibling. (The failed branch's own undo
    # may go ahead meanwhile: members of a group do not wait for each other.)
    assert step(stack, run_id, "reserve_inventory", "compensate") is None
    assert step(stack, run_id, "create_shipment").status == "running"

    released = time.monotonic()
    (stack.folder / f"gate-ship-{run_id}").touch()
    run = stack.wait_terminal(run_id, 30)
    took = time.monotonic() - released

    assert run["status"] == "compensated", run
    history = events(stack, run_id)
    shipped = first(history, "step.succeeded", "create_shipment")
    assert shipped > first(history, "step.failed", "charge_card")
    assert shipped < first(history, "compensation.running", "create_shipment")
    releasing = first(history, "compensation.running", "reserve_inventory")
    assert last(history, "compensation.succeeded", "create_shipment") < releasing
    assert last(history, "compensation.succeeded", "charge_card") < releasing
    assert step(stack, run_id, "email_warehouse") is None
    undo_first = first(history, "compensation.running", "charge_card") < shipped
    assert actions(stack, order["order_id"]) == ["reserve", "ship", "cancel", "release"]
    invariants.check(stack, [run_id], REGISTRY)
    report(stack, "parallel branch failing while its sibling runs",
           sibling_released_to_compensated=took)
    print(f"  the failed branch's undo started before the sibling settled: {undo_first}")
