"""Take docs/images/flower-compensated-order.png: Flower showing a compensated order.

    python docs/screenshot_flower.py [--broker-url redis://127.0.0.1:6379/0] [--out PATH]

Starts a real stack on a fresh PostgreSQL database (`saga api`, `saga worker`, `saga
sweeper` and `saga flower`, as the tests do), sends an order whose card fails twice before
it is charged and whose address no carrier serves, so the charge is refunded and the
reservation released, then opens Flower's task list filtered to that run in headless
Chromium and saves it. Needs the servers the tests use (SAGA_TEST_DATABASE_URL, an admin
database), Debian's chromium (`apt-get install chromium`) and the docs extra
(`pip install -e '.[docs]'`: Playwright, which drives that chromium and downloads none).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from saga import migrations  # noqa: E402
from tests.stack import Stack, free_port, wait_for  # noqa: E402

ADMIN_URL = os.environ.get("SAGA_TEST_DATABASE_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOGIN = ("admin", uuid.uuid4().hex)
OUT = ROOT / "docs" / "images" / "flower-compensated-order.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"saga_shot_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(url)
        with tempfile.TemporaryDirectory(prefix="saga-shot-") as folder, \
                Stack(url, args.broker_url, Path(folder)) as stack:
            run_id, port = compensated_order(stack)
            shoot(f"http://127.0.0.1:{port}", run_id, args.out)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    print(f"saved {args.out}")
    return 0


def compensated_order(stack: Stack) -> tuple[str, int]:
    """Run the stack and Flower; a shipped order for company, then the compensated one."""
    port = free_port()
    flower = stack.start_process(
        "flower", ["-m", "saga.cli", "flower", "--port", str(port), "--persistent=False"],
        {"SAGA_FLOWER_BASIC_AUTH": ":".join(LOGIN)})
    stack.api()
    stack.worker()
    stack.sweeper()

    def hears_worker() -> bool:
        import requests

        if not flower.alive():
            raise RuntimeError(f"flower exited:\n{flower.output()}")
        try:
            return bool(requests.get(f"http://127.0.0.1:{port}/workers", params={"json": 1},
                                     auth=LOGIN, timeout=5).json())
        except requests.RequestException:
            return False

    wait_for(hears_worker, 30, "Flower to hear from the worker")
    stack.wait_terminal(stack.post_order(), 30)
    run_id = stack.post_order(card="flaky", address="nowhere")
    assert stack.wait_terminal(run_id, 30)["status"] == "compensated"
    return run_id, port


def shoot(base: str, run_id: str, out: Path) -> None:
    """Flower's task list, filtered to `run_id`, as a PNG."""
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(
                http_credentials={"username": LOGIN[0], "password": LOGIN[1]},
                viewport={"width": 1920, "height": 760}).new_page()
            page.goto(f"{base}/tasks")
            page.get_by_role("searchbox", name="Search tasks").fill(run_id)
            # The run's attempts: the refunds and the release are its last rows.
            page.get_by_role("cell", name="order_fulfillment.reserve_inventory.compensate",
                             exact=True).wait_for()
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
