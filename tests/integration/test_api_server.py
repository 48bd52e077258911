"""`saga api` serves under gunicorn: worker processes, the real port, a clean stop."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import requests

from tests.conftest import BROKERS, need
from tests.stack import ROOT, Process, wait_for


def saga_api(folder: Path, database_url: str, *args: str, **env: str) -> Process:
    """`saga api` on a free port, with only this test's SAGA_* settings."""
    need("rabbitmq", BROKERS["rabbitmq"])
    clean = {key: value for key, value in os.environ.items() if not key.startswith("SAGA_")}
    env = {**clean, "PYTHONPATH": str(ROOT), "SAGA_DATABASE_URL": database_url,
           "SAGA_BROKER_URL": BROKERS["rabbitmq"], "SAGA_SAGAS": "examples.fulfillment", **env}
    argv = [sys.executable, "-m", "saga.cli", "api", "--port", "0", *args]
    return Process("api", argv, env, folder / "api.log")


def announced_port(api: Process) -> int:
    def port() -> int | None:
        if not api.alive():
            raise AssertionError(f"saga api exited:\n{api.output()}")
        match = re.search(r"saga api on http://127\.0\.0\.1:(\d+)", api.output())
        return int(match.group(1)) if match else None

    return wait_for(port, 30, "saga api to say where it listens")


def test_saga_api_runs_gunicorn_workers_on_the_port_it_announces(database_url: str,
                                                                  tmp_path: Path) -> None:
    api = saga_api(tmp_path, database_url, "--workers", "3", "--threads", "2")
    try:
        base = f"http://127.0.0.1:{announced_port(api)}"

        def health() -> requests.Response | None:
            try:
                response = requests.get(f"{base}/v1/health", timeout=5)
            except requests.ConnectionError:
                return None
            return response if response.status_code == 200 else None

        response = wait_for(health, 30, "/v1/health to answer 200")
        assert response.headers["Server"].startswith("gunicorn")
        assert response.json() == {"database": "ok", "broker": "ok"}
        wait_for(lambda: len(api.children()) == 3, 30, "three gunicorn workers")

        api.signal(signal.SIGTERM)
        wait_for(lambda: not api.alive(), 15, "saga api to stop on SIGTERM")
        assert api.popen.returncode == 0, api.output()
    finally:
        api.stop()


def test_saga_api_with_bad_settings_stops_before_forking_with_a_clear_message(
        database_url: str, tmp_path: Path) -> None:
    api = saga_api(tmp_path, database_url, SAGA_SAGAS="no_such_module_anywhere")
    try:
        wait_for(lambda: not api.alive(), 30, "saga api to refuse to start")
        assert api.popen.returncode != 0
        assert "cannot load the sagas in SAGA_SAGAS" in api.output()
        assert "Booting worker" not in api.output()
    finally:
        api.stop()
