"""The saga test kit on the demo's order fulfillment (examples/fulfillment.py), whose steps call
the demo services over real HTTP: a signal wait, a wait that times out when the clock
moves two days, retries against a flaky card, and an exploration of crashes.

The services run in a thread of this process on their own SQLite file; the invariant
reads their effect log (`GET /demo/effects`), as tests/faults/invariants.py does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import flask
import pytest
import requests
import sqlalchemy as sa
from werkzeug.serving import make_server

from examples.fulfillment import order_fulfillment_v2
from examples.services import FLAKY_CARD, FLAKY_FAILURES, create_tables, make_demo_services
from saga.testing.kit import Result, SagaKit

UNDO = {"reserve": "release", "charge": "refund", "ship": "cancel"}
LABEL = {"tracking": "1Z999AA10123456784"}


@pytest.fixture(scope="module")
def services() -> Iterator[str]:
    """The demo inventory, payment and shipping services, served over HTTP.

    Their SQLite file is kept in memory where the machine allows (as the kit keeps its
    own): each request commits a few times, and a busy disk would make those the cost.
    """
    folder = tempfile.mkdtemp(prefix="kit-services-",
                              dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    engine = sa.create_engine(f"sqlite:///{folder}/services.db",
                              connect_args={"check_same_thread": False})
    create_tables(engine)
    app = flask.Flask("demo_services")
    app.register_blueprint(make_demo_services(engine))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    engine.dispose()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def base(services: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SAGA_DEMO_SERVICES_URL", services)  # where the steps find them
    return services


def order(**changes: Any) -> dict[str, Any]:
    return {"order_id": f"o-{uuid.uuid4().hex[:8]}", "items": [{"sku": "teapot", "qty": 1}],
            "amount_cents": 4200, "card": "4242", "address": "1 Main St",
            "email": "ada@example.com", **changes}


def actions(base: str, order_id: str) -> list[str]:
    effects = requests.get(f"{base}/demo/effects", params={"order_id": order_id},
                           timeout=10).json()["effects"]
    return [e["action"] for e in effects]


def every_effect_once_and_undone_unless_shipped(base: str, result: Result) -> None:
    """Per order: a shipped order has reserve, charge and ship once and no undo; any other
    ends with each effect it had undone once."""
    done = Counter(actions(base, result.input["order_id"]))
    assert all(n == 1 for n in done.values()), f"an effect applied twice: {dict(done)}"
    if result.status == "succeeded":
        assert set(done) == set(UNDO), f"shipped with effects {dict(done)}"
    else:
        for effect, undo in UNDO.items():
            assert done[effect] == done[undo], \
                f"order ended {result.status} with {effect} x{done[effect]}, {undo} x{done[undo]}"


def test_an_order_waits_for_its_label_then_ships(saga_kit: SagaKit, base: str) -> None:
    placed = saga_kit.run(order_fulfillment_v2, order())
    assert placed.status == "running"
    assert placed.waiting_for == ("shipping_label",)

    shipped = saga_kit.signal(placed.id, "shipping_label", LABEL)
    assert shipped.status == "succeeded"
    assert shipped.outputs["email_user"]["tracking"] == LABEL["tracking"]
    assert actions(base, placed.input["order_id"]) == ["reserve", "charge", "ship"]


def test_a_label_that_never_comes_times_out_when_the_clock_moves_two_days(
        saga_kit: SagaKit, base: str) -> None:
    placed = saga_kit.run(order_fulfillment_v2, order())
    saga_kit.advance(timedelta(days=2, seconds=1))

    result = saga_kit.result(placed.id)
    assert result.status == "compensated"
    assert "no 'shipping_label' signal within 2 days" in result.error
    assert actions(base, placed.input["order_id"]) == [
        "reserve", "charge", "ship", "cancel", "refund", "release"]


def test_a_flaky_card_is_charged_on_its_third_attempt_without_waiting(
        saga_kit: SagaKit, base: str) -> None:
    result = saga_kit.run(order_fulfillment_v2, order(card=FLAKY_CARD),
                          signals={"shipping_label": LABEL})
    assert result.status == "succeeded"
    assert result.attempts("charge_card") == FLAKY_FAILURES + 1
    every_effect_once_and_undone_unless_shipped(base, result)


def test_explore_crashes_keep_each_effect_once(saga_kit: SagaKit, base: str) -> None:
    """A crash after a step's effect (the effect is not recorded: the step runs again) and
    one after its commit (what it queued is not published: the sweeper republishes it), in
    every step and compensation; the other points are explored on the trip saga."""
    exploration = saga_kit.explore(
        order_fulfillment_v2, order, lambda r: every_effect_once_and_undone_unless_shipped(base, r),
        signals={"shipping_label": LABEL}, kinds=("crash",), points=("after_effect", "after_commit"))
    # 1 plain run; 6 steps and 3 compensations x 2 crash points.
    assert len(exploration.tried) == 1 + 6 * 2 + 3 * 2
    assert exploration.missed == ()
