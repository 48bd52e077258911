"""`make demo`: four orders through the fulfillment saga on the embedded stack, as timelines.

Needs no server: a SQLite file, Celery's in-memory broker, and a worker, the sweeper and
the API (with the demo services and the web console) all in this process. On a terminal
it then keeps serving, so the orders can be watched in the web console until Ctrl-C;
elsewhere (a pipe, CI) it exits. `SAGA_DEMO_SERVE=1` or `0` chooses either way.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid

import requests
from werkzeug.serving import make_server

from saga.api import create_app
from saga.embedded import embedded
from saga.settings import Settings
from saga.store import Store
from saga.timeline import render

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # keep the timelines readable

ORDERS = [
    ("an order that ships: it waits for the carrier's label, then emails the buyer", {}, "signal"),
    ("a declined card: the reservation is released", {"card": "declined"}, None),
    ("an undeliverable address: the card is refunded, then the reservation released",
     {"address": "nowhere"}, None),
    ("an order cancelled while it waits for its label: everything done is undone", {}, "cancel"),
]
FINISHED = ("succeeded", "compensated", "cancelled", "failed")


def main() -> int:
    serve = serving()
    folder = tempfile.mkdtemp(prefix="saga-demo-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # nothing left behind in /tmp
    for stop in (signal.SIGTERM, signal.SIGHUP):  # killed or its terminal closed: still clean up
        signal.signal(stop, functools.partial(_exit_now, folder))
    settings = Settings.from_env(os.environ, database_url=f"sqlite:///{folder}/demo.db",
                                 broker_url="memory://", sagas=("examples.fulfillment",),
                                 worker_concurrency=4, sweep_interval_s=0.2,
                                 auth="off")  # a throwaway SQLite file on this machine
    with embedded(settings) as system:
        server = make_server("127.0.0.1", 0, create_app(settings, system), threaded=True)
        base = f"http://127.0.0.1:{server.server_port}"
        console = f"{base}/ui/runs"
        os.environ["SAGA_DEMO_SERVICES_URL"] = base  # where the saga's steps find the services
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"embedded stack: SQLite at {folder}/demo.db (removed at exit), in-memory "
              f"broker, API on {base}, web console on {console}\n")
        ended = [run_order(base, system.store, *order) for order in ORDERS]
        if serve:
            print(f"Watch these orders in the web console: {console} — Ctrl-C to stop",
                  flush=True)
            try:
                threading.Event().wait()  # until Ctrl-C
            except KeyboardInterrupt:
                print("\nstopping the embedded stack (Ctrl-C again: at once)", flush=True)
        else:
            print(f"The web console showed these orders at {console} while the demo ran; "
                  "on a terminal (or with SAGA_DEMO_SERVE=1) the demo keeps serving it.")
        server.shutdown()
    return 1 if any(status not in ("succeeded", "compensated", "cancelled")
                    for status in ended) else 0


def run_order(base: str, store: Store, title: str, changes: dict, then: str | None) -> str:
    """Start one order through the demo's `/orders`, see it to its end, print its timeline."""
    order = {"order_id": f"order-{uuid.uuid4().hex[:6]}", "amount_cents": 4200,
             "items": [{"sku": "teapot", "qty": 1}], "card": "4242",
             "address": "1 Main St", "email": "ada@example.com", **changes}
    run_id = requests.post(f"{base}/orders", json=order, timeout=10).json()["run_id"]
    print(f"== {title}")
    run = wait_until(base, run_id, FINISHED + ("waiting",))
    if run["status"] == "waiting":
        print(f"  ... run {run_id} is waiting for its 'shipping_label' signal, holding no worker")
        if then == "signal":
            requests.post(f"{base}/v1/runs/{run_id}/signals/shipping_label",
                          json={"payload": {"tracking": "1Z999AA10123456784"}}, timeout=10)
            print("  ... the carrier sends the label: POST /v1/runs/{id}/signals/shipping_label")
        else:
            requests.post(f"{base}/v1/runs/{run_id}/cancel", timeout=10)
            print("  ... the buyer cancels: POST /v1/runs/{id}/cancel")
        run = wait_until(base, run_id, FINISHED)
    print(render(store.get_run(run_id), store.events(run_id)))
    effects = requests.get(f"{base}/demo/effects", params={"order_id": order["order_id"]},
                           timeout=10).json()["effects"]
    print("  effects applied by the services: "
          + (", ".join(e["action"] for e in effects) or "none") + "\n")
    return str(run["status"])


def wait_until(base: str, run_id: str, statuses: tuple[str, ...], timeout: float = 30) -> dict:
    """Poll the run until it is in one of `statuses` ("waiting": its current step waits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = requests.get(f"{base}/v1/runs/{run_id}", timeout=10).json()
        if run["status"] in statuses:
            return run
        if "waiting" in statuses and any(s["status"] == "waiting" for s in run["steps"]):
            return dict(run, status="waiting")
        time.sleep(0.05)
    raise SystemExit(f"run {run_id} did not reach {statuses} in {timeout}s")


def serving() -> bool:
    """Keep serving the console after the orders? On a terminal, unless SAGA_DEMO_SERVE says."""
    chosen = os.environ.get("SAGA_DEMO_SERVE", "").strip().lower()
    if chosen in ("1", "on", "yes", "true"):
        return True
    if chosen in ("0", "off", "no", "false"):
        return False
    if chosen:
        raise SystemExit(f"SAGA_DEMO_SERVE={chosen!r}: use 1 (keep serving) or 0 (exit)")
    return sys.stdout.isatty()


def _exit_now(folder: str, signum: int, frame: object) -> None:
    """Remove the folder and exit at once: a throwaway stack has nothing to shut down
    gracefully, and whoever sent the signal may follow it with SIGKILL (script(1) does,
    2 s later), while the worker's graceful stop can take longer."""
    sys.stdout.flush()
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(128 + signum)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # while the orders run, or again while stopping
        sys.exit(130)
