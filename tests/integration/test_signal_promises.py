"""What the signal endpoint promises: a repeated delivery answers as the first did, even
after the run finished, and a run that will never reach its wait refuses signals (409).

Real PostgreSQL; the broker is Kombu's in-memory transport and the tests run each step
in-process with `Worker.run_step`, so they decide exactly where the run stands.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import flask
import pytest

from saga import NonRetryable, Saga, Step, WaitForSignal
from saga.api import create_app
from saga.registry import Registry
from saga.run import Role
from saga.settings import Settings
from saga.system import System, build

PROBLEM = "application/problem+json"


def record(ctx) -> dict:
    return {"step": ctx.step}


def decline(ctx) -> dict:
    raise NonRetryable("card declined")


GATED = Saga("gated", steps=[
    Step("reserve", record, compensate=record),
    WaitForSignal("go"),
    Step("ship", record),
])
# Fails before its wait: it compensates, and its wait will never be reached.
DECLINED = Saga("declined", steps=[
    Step("reserve", record, compensate=record),
    Step("charge", decline),
    WaitForSignal("go"),
    Step("ship", record),
])


@pytest.fixture
def system(database_url: str) -> Iterator[System]:
    settings = Settings(database_url=database_url, broker_url="memory://", inline_steps=0,
                        auth="off")
    built = build(settings, Registry([GATED, DECLINED]))
    yield built
    built.store.close()


@pytest.fixture
def client(system: System):
    app: flask.Flask = create_app(system.settings, system)
    return app.test_client()


def start(client, saga: str) -> str:
    response = client.post(f"/v1/sagas/{saga}/runs", json={"input": {}})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["id"]


def run_queued(client, system: System, run_id: str, saga: str, timeout: float = 10.0) -> dict:
    """Run every queued step or compensation in-process until none is left; the run's view."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/v1/runs/{run_id}").get_json()
        queued = [(s["name"], Role.FORWARD) for s in run["steps"] if s["status"] == "queued"]
        queued += [(c["name"], Role.COMPENSATE) for c in run["compensations"]
                   if c["status"] == "queued"]
        if not queued:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still has steps queued: {queued}"
        for name, role in queued:
            system.worker.run_step(run_id, name, role, saga, 1, worker="test")


def signal(client, run_id: str, key: str | None = None, payload: dict | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(f"/v1/runs/{run_id}/signals/go", json={"payload": payload or {"n": 1}},
                       headers=headers)


def signal_events(client, run_id: str) -> list[dict]:
    return client.get(f"/v1/runs/{run_id}/events?type=signal.").get_json()["events"]


def test_a_repeated_signal_after_the_run_finished_answers_as_the_first_did(client, system):
    """Given a signal delivered with a key and the run then finished, When the same signal
    comes again with that key, Then 200 with the first delivery's id, not a 409."""
    run_id, key = start(client, "gated"), str(uuid.uuid4())
    first = signal(client, run_id, key)
    assert first.status_code == 202, first.get_data(as_text=True)
    assert run_queued(client, system, run_id, "gated")["status"] == "succeeded"

    again = signal(client, run_id, key)
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json()["signal_id"] == first.get_json()["signal_id"]
    assert again.get_json()["duplicate"] is True
    assert len(signal_events(client, run_id)) == 1
    # A new delivery (another key, or none) to the finished run is still refused.
    assert signal(client, run_id, str(uuid.uuid4())).status_code == 409
    assert signal(client, run_id).status_code == 409


def assert_refused(response, why: str) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code == 409, text
    assert response.headers["Content-Type"] == PROBLEM
    assert why in response.get_json(force=True)["detail"], text


def test_a_signal_to_a_compensating_run_is_a_409_saying_why(client, system):
    """Given a run compensating a failure before its wait, When signalled, Then 409 saying
    it is compensating, and nothing is recorded."""
    run_id = start(client, "declined")
    system.worker.run_step(run_id, "reserve", Role.FORWARD, "declined", 1, worker="test")
    system.worker.run_step(run_id, "charge", Role.FORWARD, "declined", 1, worker="test")
    assert client.get(f"/v1/runs/{run_id}").get_json()["status"] == "compensating"

    assert_refused(signal(client, run_id, str(uuid.uuid4())), "compensating")
    assert signal_events(client, run_id) == []


def test_a_signal_to_a_cancelling_run_is_a_409_saying_why(client, system):
    """Given a run asked to cancel while it waits, When signalled, Then 409 saying it is
    being cancelled, and nothing is recorded."""
    run_id = start(client, "gated")
    system.worker.run_step(run_id, "reserve", Role.FORWARD, "gated", 1, worker="test")
    cancelled = client.post(f"/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 202, cancelled.get_data(as_text=True)

    assert_refused(signal(client, run_id, str(uuid.uuid4())), "cancel")
    assert signal_events(client, run_id) == []
