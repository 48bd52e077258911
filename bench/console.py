"""How fast the console renders big things: the runs list over 100,000 runs, a run of 1,000 events.

    python bench/console.py [--runs 100000] [--threads 8] [--repeat 25] [--keep] [--database NAME]

A fresh PostgreSQL database (`bench_console_<random>`, migrated, dropped at the end unless
`--keep`). First one long run goes through the real worker and engine in this process
(the saga test kit: no broker, a movable clock): 125 steps that each fail twice before they
succeed, 375 attempts, about 1,000 events. Then `--runs` orders of the demo saga
(examples/fulfillment.py, versions 1 and 2 alternating, each with its own order id, email
and idempotency key) are started through `Engine.start` from `--threads` threads, as the
API starts them; the broker is Celery's in-memory one and no worker runs, so they stay
`running` with their first step queued. The time that took is printed.

Then, in this process, the Flask app (`create_app`, SAGA_AUTH on, an admin token signed
in to the console) answers `--repeat` GETs of each page after two warm-ups, and the bench
prints the median and the slowest beside the JSON API's GET of the same thing: the runs
list against GET /v1/runs, the run page against GET /v1/runs/<id> plus its events. Also
the runs list searched for one order id, filtered by status, and its second page.

`--database NAME`: use that existing database (made by an earlier `--keep`) instead of a
new one, adding only the runs it lacks. Servers: BENCH_DATABASE_URL (an admin database on
the PostgreSQL server, as in bench/throughput.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from saga import Retry, Saga, Step, StepContext  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
LONG_STEPS = 125  # x 8 events each (3 attempts: queued, running, retry_wait, ...) ≈ 1,000


def busy_twice(ctx: StepContext) -> dict[str, Any]:
    if ctx.attempt < 3:
        raise RuntimeError(f"warehouse busy (attempt {ctx.attempt})")
    return {"step": ctx.step, "attempt": ctx.attempt}


long_order = Saga("long_order", steps=[
    Step(f"pick_{i:03d}", busy_twice, retry=Retry(attempts=3, first_delay=timedelta(seconds=1)))
    for i in range(LONG_STEPS)])


def sagas() -> list[Saga]:
    from examples.fulfillment import order_fulfillment, order_fulfillment_v2

    return [order_fulfillment, order_fulfillment_v2, long_order]


# -- the database -------------------------------------------------------------------------

def create_database() -> str:
    from saga import migrations

    name = f"bench_console_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    migrations.upgrade(url_of(name))
    return name


def drop_database(name: str) -> None:
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def url_of(name: str) -> str:
    return sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def count(url: str, sql: str, **params: Any) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())
    finally:
        engine.dispose()


def vacuum(url: str) -> None:
    """VACUUM ANALYZE, as autovacuum would have done by now on a live system."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


# -- populating through the real paths ------------------------------------------------------

def long_run(url: str) -> str:
    """The run of about 1,000 events, through the kit's worker and engine: its id."""
    from saga.testing.kit import SagaKit

    found = count(url, "SELECT count(*) FROM runs WHERE saga = 'long_order'")
    if found:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            run_id = conn.execute(sa.text("SELECT id FROM runs WHERE saga = 'long_order'")).scalar_one()
        engine.dispose()
        return str(run_id)
    with SagaKit(url, [long_order]) as kit:
        result = kit.run(long_order, {"order_id": "long-1"})
        assert result.status == "succeeded", result.timeline
        return result.id


def start_orders(system: Any, total: int, threads: int) -> float:
    """Start `total` demo orders from `threads` threads; the seconds it took."""
    done = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def starter(index: int) -> None:
        try:
            for n in range(index, total, threads):
                order_id = f"ord-{n:06d}-{uuid.uuid4().hex[:6]}"
                order = {"order_id": order_id, "items": [{"sku": f"sku-{n % 97}", "qty": 1}],
                         "amount_cents": 1000 + n % 5000, "card": "4242",
                         "address": f"{n} Main St", "email": f"buyer{n}@example.com"}
                system.engine.start("order_fulfillment", order, f"order:{order_id}",
                                    version=1 + n % 2, actor="bench")
                with lock:
                    done[0] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    began = time.perf_counter()
    workers = [threading.Thread(target=starter, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    last = 0
    while any(w.is_alive() for w in workers):
        for worker in workers:
            worker.join(10)
        if done[0] - last >= 10_000:
            last = done[0]
            print(f"  … {done[0]:,} started ({done[0] / (time.perf_counter() - began):,.0f}/s)",
                  flush=True)
    if errors:
        raise errors[0]
    return time.perf_counter() - began


# -- measuring ----------------------------------------------------------------------------

def timed(get: Callable[[], Any], repeat: int) -> tuple[float, float, int]:
    """(median ms, slowest ms, bytes) of `repeat` calls after two warm-ups."""
    for _ in range(2):
        get()
    times, size = [], 0
    for _ in range(repeat):
        began = time.perf_counter()
        response = get()
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (response.status_code, response.get_data(True)[:500])
        size = len(response.get_data())
    return statistics.median(times), max(times), size


def sign_in(client: Any, token: str) -> None:
    """Sign the test client in to the console as a browser does: the form, its CSRF field."""
    form = client.get("/ui/login").get_data(as_text=True)
    fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form))
    response = client.post("/ui/login", data={**fields, "token": token})
    assert response.status_code in (302, 303), (response.status_code, response.get_data(True))


def measure(url: str, long_id: str, repeat: int) -> list[tuple[str, tuple, tuple | None]]:
    from saga.api import create_app
    from saga.registry import Registry
    from saga.settings import Settings
    from saga.store.tokens import TokenStore
    from saga.system import build

    settings = Settings(database_url=url, broker_url="memory://", auth="on")
    system = build(settings, Registry(sagas()))
    app = create_app(settings, system)
    token = TokenStore(system.store.engine).create(f"bench-{uuid.uuid4().hex[:6]}", "admin")
    api = app.test_client()
    api.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    console = app.test_client()
    sign_in(console, token)
    order_id = system.store.list_runs("order_fulfillment", None, 1)[0][0]["input"]["order_id"]
    second = api.get("/v1/runs?limit=50").get_json()["next_cursor"]
    first_page = console.get("/ui/runs").get_data(as_text=True)
    more = re.search(r'href="(/ui/runs\?[^"]*cursor=[^"]+)"', first_page)

    def run_json() -> Any:
        run = api.get(f"/v1/runs/{long_id}")
        api.get(f"/v1/runs/{long_id}/events")
        return run

    rows: list[tuple[str, tuple, tuple | None]] = [
        ("runs list, newest 50", timed(lambda: console.get("/ui/runs"), repeat),
         timed(lambda: api.get("/v1/runs?limit=50"), repeat)),
        ("runs list, status=running", timed(lambda: console.get("/ui/runs?status=running"), repeat),
         timed(lambda: api.get("/v1/runs?limit=50&status=running"), repeat)),
        ("runs list, search an order id", timed(lambda: console.get(f"/ui/runs?q={order_id}"),
                                                repeat), None),
    ]
    if more:
        link = more.group(1).replace("&amp;", "&")
        rows.append(("runs list, second page", timed(lambda: console.get(link), repeat),
                     timed(lambda: api.get(f"/v1/runs?limit=50&cursor={second}"), repeat)))
    rows.append((f"run page, {count(url, 'SELECT count(*) FROM events WHERE run_id = :r', r=long_id)}"
                 " events", timed(lambda: console.get(f"/ui/runs/{long_id}"), repeat),
                 timed(run_json, repeat)))
    system.store.close()
    return rows


def report(rows: list[tuple[str, tuple, tuple | None]]) -> None:
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    print(f"\nload average {load} on {os.cpu_count()} cores (others' work slows every figure)")
    print(f"{'page':<34} {'console ms':>18} {'JSON API ms':>18} {'console KB':>11}")
    print(f"{'':<34} {'median (max)':>18} {'median (max)':>18}")
    for name, ours, base in rows:
        theirs = f"{base[0]:8.1f} ({base[1]:6.1f})" if base else f"{'—':>17}"
        print(f"{name:<34} {ours[0]:8.1f} ({ours[1]:6.1f}) {theirs:>18} {ours[2] / 1024:11.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the database; print its name")
    parser.add_argument("--database", help="an existing database made by --keep")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the long run's 250 failed attempts would fill the screen
    name = args.database or create_database()
    url = url_of(name)
    if args.database:
        from saga import migrations

        migrations.upgrade(url)  # the indexes added since it was made
    try:
        began = time.perf_counter()
        long_id = long_run(url)
        print(f"the long run: {long_id} (found or made in {time.perf_counter() - began:.1f} s)")
        missing = args.runs - count(url, "SELECT count(*) FROM runs WHERE saga = 'order_fulfillment'")
        if missing > 0:
            from saga.registry import Registry
            from saga.settings import Settings
            from saga.system import build

            system = build(Settings(database_url=url, broker_url="memory://"), Registry(sagas()))
            print(f"starting {missing:,} orders through Engine.start, {args.threads} threads")
            took = start_orders(system, missing, args.threads)
            system.store.close()
            print(f"started {missing:,} runs in {took:.1f} s ({missing / took:,.0f} runs/s)")
        vacuum(url)
        report(measure(url, long_id, args.repeat))
    finally:
        if args.keep or args.database:
            print(f"\nkept database {name}")
        else:
            drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
