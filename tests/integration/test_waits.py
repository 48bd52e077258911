"""Long-running sagas on the real stack: timers, signals, cancellation and versions.

Time passes through the injectable clock (`Stack.advance_clock`), never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from saga.registry import Registry
from tests.conftest import BROKERS, need
from tests.faults import invariants
from tests.stack import Stack, wait_for

HOUR = 3600.0
DAY = 24 * HOUR


@pytest.fixture
def rabbit(database_url: str, tmp_path) -> Iterator[Stack]:
    """One broker is enough here: these tests are about time, not transport."""
    need("rabbitmq", BROKERS["rabbitmq"])
    with Stack(database_url, BROKERS["rabbitmq"], tmp_path) as stack:
        yield stack


def _step(run: dict, name: str) -> dict:
    return next(s for s in run["steps"] if s["name"] == name)


def _waiting_on(stack: Stack, run_id: str, name: str) -> dict:
    return wait_for(lambda: next((s for s in stack.run(run_id)["steps"]
                                  if s["name"] == name and s["status"] == "waiting"), None),
                    30, f"step {name} of run {run_id} to wait")


def _signal(stack: Stack, run_id: str, name: str, payload: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return stack.http.post(f"{stack.base}/v1/runs/{run_id}/signals/{name}",
                           json={"payload": payload}, headers=headers, timeout=10)


def test_timer_survives_every_process_restarting(rabbit: Stack) -> None:
    """Given a run waiting an hour, when every process is restarted and the hour passes,
    then the sweeper fires the timer and the run finishes."""
    api, worker, sweeper = rabbit.api(), rabbit.worker(), rabbit.sweeper()
    run_id = rabbit.post_run("napping", {})
    nap = _waiting_on(rabbit, run_id, "nap")
    for process in (api, worker, sweeper):
        process.stop()
    rabbit.api()
    rabbit.worker()
    rabbit.sweeper()
    assert _step(rabbit.run(run_id), "nap")["status"] == "waiting"
    rabbit.advance_clock(HOUR + 1)
    run = rabbit.wait_terminal(run_id)
    assert run["status"] == "succeeded", run
    assert _step(run, "nap")["output"]["woke_at"] == nap["wake_at"]
    assert _step(run, "after")["output"]["outputs"] == ["before", "nap"]


def test_signal_sent_before_the_wait_is_kept_until_the_run_gets_there(rabbit: Stack) -> None:
    """Given a run still in its 20-minute cool-off, a label signal sent now is consumed when
    the run reaches its wait; the same signal again (same key) is applied once."""
    rabbit.api(), rabbit.worker(), rabbit.sweeper()
    run_id = rabbit.post_run("labelled", {})
    _waiting_on(rabbit, run_id, "cool_off")
    first = _signal(rabbit, run_id, "label", {"tracking": "T-1"}, key="label-1")
    again = _signal(rabbit, run_id, "label", {"tracking": "T-1"}, key="label-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["duplicate"] is True
    rabbit.advance_clock(20 * 60 + 1)
    run = rabbit.wait_terminal(run_id)
    assert run["status"] == "succeeded", run
    assert _step(run, "label")["output"] == {"tracking": "T-1"}
    received = rabbit.query("SELECT count(*) FROM signals WHERE run_id = :r", r=run_id)
    assert received[0][0] == 1


def test_signal_sent_while_waiting_completes_the_wait(rabbit: Stack) -> None:
    """Given a run waiting for its label, the signal's payload becomes the step's output."""
    rabbit.api(), rabbit.worker(), rabbit.sweeper()
    run_id = rabbit.post_run("labelled", {})
    _waiting_on(rabbit, run_id, "cool_off")
    rabbit.advance_clock(20 * 60 + 1)
    _waiting_on(rabbit, run_id, "label")
    assert _signal(rabbit, run_id, "label", {"tracking": "T-2"}).status_code == 202
    run = rabbit.wait_terminal(run_id)
    assert run["status"] == "succeeded"
    assert _step(run, "notify")["output"]["outputs"] == ["cool_off", "label", "reserve"]


def test_signal_errors_are_clear(rabbit: Stack) -> None:
    """An undeclared signal is a 404, one to a finished run a 409, an unknown run a 404."""
    rabbit.api(), rabbit.worker(), rabbit.sweeper()
    run_id = rabbit.post_run("labelled", {})
    assert _signal(rabbit, run_id, "nonsense", {}).status_code == 404
    assert _signal(rabbit, "no-such-run", "label", {}).status_code == 404
    assert rabbit.http.post(f"{rabbit.base}/v1/runs/{run_id}/cancel", timeout=10).status_code == 202
    rabbit.wait_terminal(run_id)
    finished = _signal(rabbit, run_id, "label", {"tracking": "late"})
    assert finished.status_code == 409
    assert finished.headers["Content-Type"] == "application/problem+json"


def test_signal_timeout_compensates(rabbit: Stack) -> None:
    """Given no label within two days, the wait fails and what was done is compensated."""
    rabbit.api(), rabbit.worker(), rabbit.sweeper()
    run_id = rabbit.post_run("labelled", {})
    _waiting_on(rabbit, run_id, "cool_off")
    rabbit.advance_clock(20 * 60 + 1)
    _waiting_on(rabbit, run_id, "label")
    rabbit.advance_clock(2 * DAY + 1)
    run = rabbit.wait_terminal(run_id)
    assert run["status"] == "compensated", run
    assert "no 'label' signal" in _step(run, "label")["error"]
    assert [c["name"] for c in run["compensations"]] == ["reserve"]
    alerts = rabbit.query("SELECT count(*) FROM events WHERE run_id = :r AND type = 'alert.timeout'",
                          r=run_id)
    assert alerts[0][0] == 1


def test_signal_timeout_continues_down_the_declared_path(rabbit: Stack) -> None:
    """Given on_timeout="continue", the wait ends with {"timed_out": true} and the saga goes on."""
    rabbit.api(), rabbit.worker(), rabbit.sweeper()
    run_id = rabbit.post_run("patient", {})
    _waiting_on(rabbit, run_id, "label")
    rabbit.advance_clock(2 * DAY + 1)
    run = rabbit.wait_terminal(run_id)
    assert run["status"] == "succeeded", run
    assert _step(run, "label")["output"] == {"timed_out": True}


def _cancel(stack: Stack, run_id: str) -> requests.Response:
    return stack.http.post(f"{stack.base}/v1/runs/{run_id}/cancel", timeout=10)


def test_cancel_while_waiting_undoes_what_was_done(rabbit: Stack) -> None:
    """Given a run waiting on a timer, cancel ends it `cancelled` with its steps compensated."""
    rabbit.api(), rabbit.worker(), rabbit.sweeper()
    run_id = rabbit.post_run("napping", {})
    _waiting_on(rabbit, run_id, "nap")
    assert _cancel(rabbit, run_id).status_code == 202
    run = rabbit.wait_terminal(run_id)
    assert run["status"] == "cancelled", run
    assert _step(run, "nap")["status"] == "cancelled"
    assert [(c["name"], c["status"]) for c in run["compensations"]] == [("before", "succeeded")]
    assert _cancel(rabbit, run_id).status_code == 409  # finished: a clear conflict


def _holding(stack: Stack, run_id: str, step: str, role: str) -> None:
    wait_for(lambda: (stack.folder / f"holding-{run_id}-{step}-{role}").exists(), 30,
             f"{role} {step} to be running")


def _release(stack: Stack, run_id: str, step: str, role: str) -> None:
    (stack.folder / f"release-{run_id}-{step}-{role}").touch()


def test_cancel_lets_the_running_step_settle_then_compensates(rabbit: Stack) -> None:
    """Given a step mid-run, cancel lets it settle, then undoes it and the one before it;
    a cancel while compensating is a 409 and the compensation goes on."""
    rabbit.api(), rabbit.worker(), rabbit.sweeper()
    run_id = rabbit.post_run("holding", {})
    _holding(rabbit, run_id, "second", "forward")
    assert _cancel(rabbit, run_id).status_code == 202
    run = rabbit.run(run_id)
    assert run["status"] == "compensating" and _step(run, "second")["status"] == "running"
    _release(rabbit, run_id, "second", "forward")
    _holding(rabbit, run_id, "first", "compensate")  # second is undone; first's undo holds
    again = _cancel(rabbit, run_id)
    assert again.status_code == 409 and "compensating" in again.json()["detail"]
    _release(rabbit, run_id, "first", "compensate")
    run = rabbit.wait_terminal(run_id)
    assert run["status"] == "cancelled", run
    assert _step(run, "second")["status"] == "succeeded"
    assert "third" not in {s["name"] for s in run["steps"]}
    assert {c["name"] for c in run["compensations"]} == {"first", "second"}
    invariants.check(rabbit, [run_id], Registry.from_modules(["tests.sagas"]))


def test_cancel_of_an_unknown_run_is_a_404(rabbit: Stack) -> None:
    rabbit.api()
    response = _cancel(rabbit, "nope")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"


def test_v1_run_finishes_on_v1_after_v2_is_deployed(rabbit: Stack) -> None:
    """Given a run of v1 waiting, when v2 is deployed (v1 still loaded), new runs start on
    v2 and the old run finishes on v1's steps."""
    rabbit.env["SAGA_SAGAS"] = "examples.fulfillment,tests.versions_v1"
    api, worker = rabbit.api(), rabbit.worker()
    old = rabbit.post_run("versioned", {})
    _waiting_on(rabbit, old, "go")
    api.stop(), worker.stop()
    rabbit.env["SAGA_SAGAS"] = "examples.fulfillment,tests.versions_v2"
    rabbit.api(), rabbit.worker()
    sagas = rabbit.http.get(f"{rabbit.base}/v1/sagas", timeout=10).json()["sagas"]
    versions = {v["version"]: v["runs_in_flight"]
                for s in sagas if s["name"] == "versioned" for v in s["versions"]}
    assert versions == {1: 1, 2: 0}
    new = rabbit.post_run("versioned", {})
    assert rabbit.run(new)["version"] == 2
    _signal(rabbit, old, "go", {})
    run = rabbit.wait_terminal(old)
    assert (run["status"], run["version"]) == ("succeeded", 1)
    assert sorted(s["name"] for s in run["steps"]) == ["a", "b", "go"]


def test_run_of_an_unloaded_version_is_parked_then_resumed(rabbit: Stack) -> None:
    """Given workers that no longer load v1, a v1 run is parked with a clear error, not lost;
    once v1 is loaded again it resumes."""
    rabbit.env["SAGA_SAGAS"] = "examples.fulfillment,tests.versions_v2"
    rabbit.api()
    worker = rabbit.worker(env={"SAGA_SAGAS": "examples.fulfillment,tests.versions_v2_only"})
    rabbit.sweeper()
    response = rabbit.http.post(f"{rabbit.base}/v1/sagas/versioned/runs",
                                json={"input": {}, "version": 1}, timeout=10)
    run_id = response.json()["id"]
    parked = wait_for(lambda: rabbit.run(run_id).get("parked"), 30, "the run to be parked")
    assert "versioned v1" in parked
    assert rabbit.run(run_id)["status"] == "running"
    worker.stop()
    rabbit.worker()
    _waiting_on(rabbit, run_id, "go")
    assert rabbit.run(run_id)["parked"] is None
    _signal(rabbit, run_id, "go", {})
    assert rabbit.wait_terminal(run_id)["status"] == "succeeded"


def test_changed_definition_under_the_same_version_is_refused(rabbit: Stack) -> None:
    """Given a v1 run, when v1 is redeployed with another shape, the run is parked, not run
    on the wrong steps, and a signal to it is a clear 409."""
    rabbit.env["SAGA_SAGAS"] = "examples.fulfillment,tests.versions_v1"
    api, worker = rabbit.api(), rabbit.worker()
    run_id = rabbit.post_run("versioned", {})
    _waiting_on(rabbit, run_id, "go")
    api.stop(), worker.stop()
    rabbit.env["SAGA_SAGAS"] = "examples.fulfillment,tests.versions_v1_changed"
    rabbit.api(), rabbit.worker()
    refused = _signal(rabbit, run_id, "go", {})
    assert refused.status_code == 409
    assert "definition changed" in refused.json()["detail"]
    assert "definition changed" in rabbit.run(run_id)["parked"]
