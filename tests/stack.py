"""Real saga processes for tests: start, wait until ready, inspect, kill, clean up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
import sqlalchemy as sa

from saga.store.deployment import deployment_id
from saga.tasks.namespace import exchanges_for
from tests.auth import Authorized, create_token

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
TERMINAL = ("succeeded", "compensated", "cancelled", "failed")


FIRST_POLL_S, MAX_POLL_S = 0.05, 0.25


def wait_for(check: Callable[[], T], timeout: float = 30.0, what: str = "condition",
             interval: float | None = None) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds.

    Every `interval` seconds if given; else soon at first, then less and less often (up to
    MAX_POLL_S): many checks ask the API, and fast polling of a long wait costs the CPU
    that the processes under test need when tests run in parallel."""
    deadline = time.monotonic() + timeout
    pause = interval or FIRST_POLL_S
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(pause)
        if interval is None:
            pause = min(pause * 1.5, MAX_POLL_S)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self._file = open(log, "wb")
        self.popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self._file,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        """Ask the whole process group to stop (see `stop`, which also waits)."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10) -> None:
        self.terminate()
        if self.alive():
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(10)
        self._file.close()

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


class Stack:
    """The processes of one test, sharing one database, broker and queue."""

    def __init__(self, database_url: str, broker_url: str, folder: Path,
                 sagas: str = "examples.fulfillment,tests.sagas") -> None:
        self.database_url, self.broker_url, self.folder = database_url, broker_url, folder
        self.queue = f"saga-test-{uuid.uuid4().hex[:8]}"
        self.other_queues: list[str] = []  # a test's own extra queues, deleted with this one
        self.api_port = free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SAGA_DATABASE_URL": database_url,
            "SAGA_BROKER_URL": broker_url,
            "SAGA_DEFAULT_QUEUE": self.queue,
            "SAGA_SAGAS": sagas,
            # The `remote` test saga calls another service's task: processes that load it
            # refuse to start without a result backend (contacted only when it runs).
            "SAGA_RESULT_BACKEND": os.environ.get("SAGA_TEST_REDIS_URL",
                                                  "redis://127.0.0.1:6379/0"),
            "SAGA_LEASE_S": "3",
            "SAGA_SWEEP_INTERVAL_S": "0.2",
            "SAGA_REDISPATCH_S": "1",
            "SAGA_DEMO_SERVICES_URL": self.base,
            "SAGA_FAULTS_DIR": str(folder),
            "SAGA_TEST_BARRIER_DIR": str(folder),
            "SAGA_TEST_CLOCK_FILE": str(folder / "clock-offset"),
        }
        self.clock_offset = 0.0
        self.processes: list[Process] = []
        self.db = sa.create_engine(database_url)
        # Every /v1 call of the tests goes through `self.http`, as this admin token.
        self.token = create_token(self.db, "admin", "stack-admin")
        self.http = Authorized(self.token)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:  # all at once: shutdowns overlap instead of queueing
            process.terminate()
        for process in self.processes:
            process.stop()
        try:
            names = exchanges_for(deployment_id(self.db))
            control = names["control_exchange"]  # kombu's Mailbox names it so
            exchanges = [names["event_exchange"], f"{control}.pidbox", f"reply.{control}.pidbox"]
        except Exception:
            exchanges = []  # a test that dropped its database: nothing to name them by
        self.db.dispose()
        self._delete_queue(exchanges)

    def _start(self, name: str, args: list[str], env: dict[str, str] | None) -> Process:
        return self.start_process(name, ["-m", "saga.cli", "--log-level", "INFO", *args], env)

    def start_process(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        """Any Python process with this stack's environment, stopped with the stack."""
        log = self.folder / f"{name}-{len(self.processes)}.log"
        process = Process(name, [sys.executable, *args], {**self.env, **(env or {})}, log)
        self.processes.append(process)
        return process

    def api(self, env: dict[str, str] | None = None, port: int | None = None) -> Process:
        """A `saga api` (on this stack's port, or `port`), once it answers /v1/health."""
        port = port or self.api_port
        process = self._start("api", ["api", "--port", str(port)], env)

        def healthy() -> bool:
            if not process.alive():
                raise AssertionError(f"api exited:\n{process.output()}")
            try:
                return requests.get(f"http://127.0.0.1:{port}/v1/health",
                                    timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, 30, "the API to answer /v1/health")
        return process

    def worker(self, concurrency: int = 2, env: dict[str, str] | None = None) -> Process:
        process = self._start("worker", ["worker", "-c", str(concurrency)], env)

        def ready() -> bool:
            if not process.alive():
                raise AssertionError(f"worker exited:\n{process.output()}")
            return " ready." in process.output()

        wait_for(ready, 60, "the worker to be ready")
        return process

    def sweeper(self, env: dict[str, str] | None = None) -> Process:
        return self._start("sweeper", ["sweeper"], env)

    def advance_clock(self, seconds: float) -> None:
        """Move every process's clock forward (the injectable clock: no sleeping)."""
        self.clock_offset += seconds
        path = Path(self.env["SAGA_TEST_CLOCK_FILE"])
        path.with_suffix(".tmp").write_text(str(self.clock_offset))
        path.with_suffix(".tmp").replace(path)  # atomic: a reader never sees half a number

    # -- looking at the result ------------------------------------------------------

    def post_order(self, version: int = 1, **overrides: Any) -> str:
        """Start the demo saga (version 1 unless asked: version 2 waits for a label signal)."""
        order = {"order_id": f"o-{uuid.uuid4().hex[:8]}", "items": [{"sku": "sku-1", "qty": 2}],
                 "amount_cents": 1999, "card": "ok", "address": "1 Main St",
                 "email": "buyer@example.com", **overrides}
        response = self.http.post(f"{self.base}/v1/sagas/order_fulfillment/runs",
                                  json={"input": order, "version": version},
                                  headers={"Idempotency-Key": f"order:{order['order_id']}"},
                                  timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def post_run(self, saga: str, input: dict[str, Any], **headers: str) -> str:
        response = self.http.post(f"{self.base}/v1/sagas/{saga}/runs", json={"input": input},
                                  headers=headers, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def celery(self) -> Any:
        """A Celery app on this stack's broker, to publish messages by hand."""
        from saga.settings import Settings
        from saga.tasks import make_celery

        return make_celery(Settings(broker_url=self.broker_url, default_queue=self.queue))

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base}/v1/runs/{run_id}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_terminal(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        """The run as the API shows it, once finished: polled in the saga log (an API call
        costs some fifteen times the CPU), then read once through the API."""
        def status() -> str | None:
            found = self.query("SELECT status FROM runs WHERE id = :id", id=run_id)
            return found[0][0] if found and found[0][0] in TERMINAL else None

        try:
            wait_for(status, timeout, f"run {run_id} to finish", interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the run now: {self.run(run_id)}") from None
        run = self.run(run_id)
        assert run["status"] in TERMINAL, run
        return run

    def effects(self, order_id: str) -> list[tuple[str, str]]:
        response = requests.get(f"{self.base}/demo/effects", params={"order_id": order_id},
                                timeout=10)
        return [(e["action"], e["idempotency_key"]) for e in response.json()["effects"]]

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def _delete_queue(self, exchanges: list[str]) -> None:
        """Remove this stack's queue, and on RabbitMQ its deployment's event and control
        exchanges (durable: every test database would otherwise leave two behind)."""
        from kombu import Connection

        queues = [self.queue, *self.other_queues]
        try:
            if self.broker_url.startswith("redis"):
                import redis

                client = redis.Redis.from_url(self.broker_url)
                for queue in queues:
                    client.delete(queue, f"_kombu.binding.{queue}",
                                  f"_kombu.binding_permanent.{queue}")
                client.close()
                return
            with Connection(self.broker_url, connect_timeout=3) as conn:
                channel = conn.default_channel
                for queue in queues:
                    channel.queue_delete(queue)
                for name in [*exchanges, *self.other_queues]:  # Celery's exchange per -Q queue
                    channel.exchange_delete(name)
        except Exception:
            pass  # best effort: a leftover queue of a finished test harms no other
