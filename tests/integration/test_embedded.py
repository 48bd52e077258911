"""The embedded default (SQLite file, in-memory broker, in-process worker): needs no server.

pytest-celery 1.x names its Docker-based fixtures `celery_worker` and so on, which shadow
Celery's in-process ones; `saga.embedded` uses the in-process worker underneath them
(`celery.contrib.testing.worker.start_worker`) directly.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import requests
from werkzeug.serving import make_server

from saga.api import create_app
from saga.embedded import embedded
from saga.settings import Settings
from saga.system import System
from tests.stack import TERMINAL, wait_for


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[System]:
    folder = tmp_path_factory.mktemp("embedded")
    settings = Settings(database_url=f"sqlite:///{folder}/saga.db", broker_url="memory://",
                        sagas=("examples.fulfillment",), sweep_interval_s=0.1,
                        worker_concurrency=4, auth="off")  # as `make demo` runs it
    with embedded(settings) as system:
        server = make_server("127.0.0.1", 0, create_app(settings, system), threaded=True)
        system.base = f"http://127.0.0.1:{server.server_port}"
        before = os.environ.get("SAGA_DEMO_SERVICES_URL")
        os.environ["SAGA_DEMO_SERVICES_URL"] = system.base
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield system
        server.shutdown()
        if before is None:
            del os.environ["SAGA_DEMO_SERVICES_URL"]
        else:
            os.environ["SAGA_DEMO_SERVICES_URL"] = before


def _order(base: str, **changes: str) -> dict:
    order = {"order_id": f"o-{changes.get('card', 'ok')}-{changes.get('address', 'x')}",
             "items": [{"sku": "teapot", "qty": 1}], "amount_cents": 500, "card": "4242",
             "address": "1 Main St", "email": "a@example.com", **changes}
    started = requests.post(f"{base}/v1/sagas/order_fulfillment/runs",
                            json={"input": order, "version": 1}, timeout=10)
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]

    def finished():
        run = requests.get(f"{base}/v1/runs/{run_id}", timeout=10).json()
        return run if run["status"] in TERMINAL else None

    run = wait_for(finished, 30, f"run {run_id} to finish")
    effects = requests.get(f"{base}/demo/effects", params={"order_id": order["order_id"]},
                           timeout=10).json()["effects"]
    return {"run": run, "effects": [e["action"] for e in effects]}


@pytest.mark.parametrize(("changes", "status", "effects"), [
    ({}, "succeeded", ["reserve", "charge", "ship"]),
    ({"card": "declined"}, "compensated", ["reserve", "release"]),
    ({"address": "nowhere"}, "compensated", ["reserve", "charge", "refund", "release"]),
    ({"card": "flaky"}, "succeeded", ["reserve", "charge", "ship"]),
])
def test_demo_orders_on_the_embedded_stack(system, changes, status, effects):
    """Given SQLite and the in-memory broker, each demo order ends as on the real stack."""
    result = _order(system.base, **changes)
    assert result["run"]["status"] == status, result["run"]
    assert result["effects"] == effects
