"""Take docs/images/console-*.png: each page of the web console, on the demo's orders.

    python docs/screenshots.py [--database-url URL] [--out FOLDER]

Starts the embedded demo stack in this process, as `make demo` does (a SQLite file in a
temporary folder unless --database-url, Celery's in-memory broker, a worker and the
sweeper as threads, the API with the demo services), but with SAGA_AUTH on and a token
named "support" to sign in with. It backfills a nightly saga over last week, sends the
demo's four orders (one ships after its label signal, a declined card, an undeliverable
address, one cancelled while it waits) and a few more, one left waiting for its label,
then opens each console page in headless Chromium and saves it:

    console-runs.png          the runs list
    console-run.png           the undeliverable order: refunded, then released
    console-sagas.png         the loaded sagas and versions
    console-saga.png          order_fulfillment version 2, its graph
    console-schedules.png     the nightly schedule and its backfill
    console-overview.png      runs per minute, slowest and most failing steps
    console-runs-phone.png    the runs list on a phone-sized screen

Needs Debian's chromium (`apt-get install chromium`) and Playwright (the test extra:
`pip install -e '.[test]'`), which drives that chromium and downloads no browser.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from docs.screenshot_flower import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from examples.demo import FINISHED, ORDERS  # noqa: E402
from saga import Saga, Schedule, Step, StepContext  # noqa: E402

OUT = ROOT / "docs" / "images"
VIEWPORT = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
# The demo's orders, then a few more so the list has a page's worth of shapes.
MORE = [{}, {"card": "declined"}, {}, {"address": "nowhere"}, {}, {}]


def reconcile(ctx: StepContext) -> dict[str, Any]:
    return {"day": ctx.input.get("logical_time") if isinstance(ctx.input, dict) else None}


# A scheduled saga, so the schedules page has a firing to show and a backfill to follow.
nightly = Saga("nightly_reconcile", steps=[Step("reconcile", reconcile)],
               schedule=Schedule("0 3 * * *", "Europe/Paris"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the demo's failing orders log as they should
    folder = tempfile.mkdtemp(prefix="saga-shots-")
    try:
        # A database given may hold a "support" token already: names are unique.
        name = f"support-{uuid.uuid4().hex[:4]}" if args.database_url else "support"
        shots = demo_and_shoot(args.database_url or f"sqlite:///{folder}/demo.db", name, args.out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for path in shots:
        print(f"saved {path}")
    return 0


def demo_and_shoot(database_url: str, token_name: str, out: Path) -> list[Path]:
    from examples.fulfillment import order_fulfillment, order_fulfillment_v2
    from saga.api import create_app
    from saga.embedded import embedded
    from saga.registry import Registry
    from saga.settings import Settings
    from saga.store.tokens import TokenStore

    settings = Settings.from_env(os.environ, database_url=database_url, broker_url="memory://",
                                 sagas=("examples.fulfillment",), worker_concurrency=4, sweep_interval_s=0.2,
                                 auth="on")
    registry = Registry([order_fulfillment, order_fulfillment_v2, nightly])
    with embedded(settings, registry) as system:
        server = make_server("127.0.0.1", 0, create_app(settings, system), threaded=True)
        base = f"http://127.0.0.1:{server.server_port}"
        os.environ["SAGA_DEMO_SERVICES_URL"] = base  # where the saga's steps find the services
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            token = TokenStore(system.store.engine).create(token_name, "admin")
            headers = {"Authorization": f"Bearer {token}"}
            backfill(base, headers)  # first, so the orders top the runs list
            compensated = send_orders(base, headers)
            return shoot(base, token, compensated, out)
        finally:
            server.shutdown()


def send_orders(base: str, headers: dict[str, str]) -> str:
    """The demo's orders, a few more, and one left waiting for its label; the id of the
    first undeliverable (compensated) one."""
    orders = [(changes, then) for _, changes, then in ORDERS]
    orders += [(changes, "signal") for changes in MORE] + [({}, None)]
    compensated = ""
    for n, (changes, then) in enumerate(orders):
        order = {"order_id": f"order-{1040 + n}", "amount_cents": 4200 + 350 * n,
                 "items": [{"sku": "teapot", "qty": 1 + n % 3}], "card": "4242",
                 "address": "1 Main St", "email": f"buyer{n}@example.com", **changes}
        started = requests.post(f"{base}/v1/sagas/order_fulfillment/runs", headers=headers,
                                json={"input": order, "version": 2}, timeout=10)
        started.raise_for_status()
        run_id = started.json()["id"]
        status = wait_status(base, headers, run_id, (*FINISHED, "waiting"))
        if changes.get("address") == "nowhere" and not compensated:
            compensated = run_id
        if status == "waiting" and then == "signal":
            requests.post(f"{base}/v1/runs/{run_id}/signals/shipping_label", headers=headers,
                          json={"payload": {"tracking": f"1Z999AA1{n:010d}"}}, timeout=10)
        elif status == "waiting" and then == "cancel":
            requests.post(f"{base}/v1/runs/{run_id}/cancel", headers=headers, timeout=10)
        if status == "waiting" and then:
            wait_status(base, headers, run_id, FINISHED)
    return compensated


def wait_status(base: str, headers: dict[str, str], run_id: str, statuses: tuple[str, ...],
                timeout: float = 30) -> str:
    """Poll the run until it is in one of `statuses` ("waiting": a step of it waits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = requests.get(f"{base}/v1/runs/{run_id}", headers=headers, timeout=10).json()
        if run["status"] in statuses:
            return str(run["status"])
        if "waiting" in statuses and any(s["status"] == "waiting" for s in run["steps"]):
            return "waiting"
        time.sleep(0.05)
    raise SystemExit(f"run {run_id} did not reach {statuses} in {timeout}s")


def backfill(base: str, headers: dict[str, str]) -> None:
    """Last week of the nightly saga, started by a backfill."""
    today = datetime.now(UTC).date()
    response = requests.post(f"{base}/v1/sagas/nightly_reconcile/backfills", headers=headers,
                             json={"from": str(today - timedelta(days=7)),
                                   "to": str(today - timedelta(days=1))}, timeout=10)
    response.raise_for_status()


def shoot(base: str, token: str, compensated: str, out: Path) -> list[Path]:
    """Sign in and save each page; the paths saved."""
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    pages = [("runs", "/ui/runs"), ("run", f"/ui/runs/{compensated}"), ("sagas", "/ui/sagas"),
             ("saga", "/ui/sagas/order_fulfillment/2"), ("schedules", "/ui/schedules"),
             ("overview", "/ui/")]
    saved = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=[*CHROMIUM_ARGS, "--disable-quic"])
        try:
            context = browser.new_context(base_url=base, viewport=VIEWPORT)
            page = context.new_page()
            page.goto("/ui/login")
            page.get_by_label("API token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("button", name="Sign out")).to_be_visible()
            for name, path in pages:
                page.goto(path)
                page.wait_for_load_state("networkidle")
                saved.append(out / f"console-{name}.png")
                page.screenshot(path=str(saved[-1]), full_page=True)
            page.set_viewport_size(PHONE)
            page.goto("/ui/runs")
            page.wait_for_load_state("networkidle")
            saved.append(out / "console-runs-phone.png")
            page.screenshot(path=str(saved[-1]))  # the first screenful
        finally:
            browser.close()
    return saved


if __name__ == "__main__":
    sys.exit(main())
