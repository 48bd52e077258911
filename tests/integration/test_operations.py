"""Operating the orchestrator: broker limits checked at start, alerts delivered, retention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from saga.alerts import Alerts
from saga.definitions import Saga, Step
from saga.events import Alert
from saga.registry import Registry
from saga.run import Role
from saga.settings import Settings
from saga.system import build
from tests.stack import ROOT, wait_for


@pytest.mark.parametrize(("broker", "setting"), [
    ("redis://127.0.0.1:6379/0", "SAGA_VISIBILITY_TIMEOUT_S"),
    ("amqp://guest:guest@127.0.0.1:5672//", "SAGA_CONSUMER_TIMEOUT_S"),
])
def test_worker_refuses_to_start_when_a_hard_limit_outlasts_the_broker(broker, setting):
    """Given a step that may run 2 hours and a broker that redelivers after 1, the worker
    exits at once with a message naming the step and the setting (before connecting)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_BROKER_URL": broker,
           "SAGA_SAGAS": "tests.long_limit_sagas", setting: "3600",
           "SAGA_DATABASE_URL": "sqlite:///unused.db"}
    done = subprocess.run([sys.executable, "-m", "saga.cli", "worker"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and "'long'" in done.stderr
    assert setting in done.stderr


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_an_alert_reaches_the_hook_and_the_webhook():
    """Given a hook and a webhook, an alert reaches both with the run, step and reason."""
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hooked: list[dict] = []
    alerts = Alerts(f"http://127.0.0.1:{server.server_port}/alerts", hooked.append)
    alerts.send("run-1", "order_fulfillment", Alert("timeout", "charge timed out", "charge"))
    wait_for(lambda: hooked and _Recorder.received, 10, "the alert to arrive")
    server.shutdown()
    expected = {"run_id": "run-1", "saga": "order_fulfillment", "reason": "timeout",
                "step": "charge", "message": "charge timed out"}
    assert hooked == [expected] and _Recorder.received == [expected]


def test_the_sweeper_prunes_finished_runs_past_retention_but_keeps_failed_ones(database_url):
    """Given retention of a day, a sweep after two days deletes finished runs (events too)
    but keeps a failed run, which waits for a person."""
    def ok(ctx):
        return None

    saga = Saga("kept", steps=[Step("a", ok)])
    settings = Settings(database_url=database_url, broker_url="memory://", retention_days=1)
    system = build(settings, Registry([saga]))
    engine = system.engine
    done, _ = engine.start("kept", {})
    failed, _ = engine.start("kept", {})
    system.worker.run_step(done, "a", Role.FORWARD, "kept", 1, worker="w")
    with system.store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE runs SET status = 'failed', error = 'x', "
                             "finished_at = now() - interval '2 days' WHERE id = %s", (failed,))
        conn.exec_driver_sql("UPDATE runs SET finished_at = now() - interval '2 days' "
                             "WHERE id = %s", (done,))
    system.sweeper.sweep_once()
    with system.store.engine.connect() as conn:
        left = {r[0] for r in conn.exec_driver_sql("SELECT id FROM runs")}
        events = conn.exec_driver_sql("SELECT count(*) FROM events WHERE run_id = %s",
                                      (done,)).scalar()
    assert left == {failed} and events == 0
    assert timedelta(days=settings.retention_days) == timedelta(days=1)

