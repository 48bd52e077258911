"""The orchestrator behind PgBouncer in transaction pooling mode, as a busy deployment runs it.

The migrations (as `saga migrate` runs them), the API with its demo services, a worker and
the sweeper all reach PostgreSQL through one real PgBouncer, whose two server connections
every client shares, transaction by transaction. The URL says `?prepare_threshold=none`: without it,
psycopg prepares a statement after its fifth run and a later transaction on another server
connection fails ("prepared statement \"_pg3_0\" does not exist" / "already exists").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from saga import migrations
from saga.registry import Registry
from saga.settings import Settings
from saga.store.database import Database
from tests.conftest import BROKERS, PG_ADMIN_URL, fresh_database, need
from tests.faults import invariants
from tests.pgbouncer import PgBouncer
from tests.stack import Stack, wait_for

HOUR = 3600.0
ORDERS = LABELLED = NAPPING = 10  # 30 runs, far more than the pooler's 2 server connections


@pytest.fixture
def bouncer() -> Iterator[PgBouncer]:
    need("PostgreSQL", PG_ADMIN_URL)
    with PgBouncer(PG_ADMIN_URL) as running:
        yield running


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database never migrated: the migrations, run through the pooler, create the log."""
    need("PostgreSQL", PG_ADMIN_URL)
    with fresh_database("saga_pgb_") as url:
        yield url


def test_prepared_statements_stay_on_unless_the_url_turns_them_off() -> None:
    """A direct URL keeps psycopg's automatic prepared statements (they save planning);
    `?prepare_threshold=none` turns them off; the parameter never reaches libpq."""
    need("PostgreSQL", PG_ADMIN_URL)
    pooled = sa.make_url(PG_ADMIN_URL).update_query_dict({"prepare_threshold": "none"})
    for url, expected in ((PG_ADMIN_URL, 5), (pooled.render_as_string(False), None)):
        database = Database(url)
        try:
            with database.engine.connect() as conn:
                driver = conn.connection.driver_connection
                assert driver is not None and driver.prepare_threshold == expected, url
        finally:
            database.close()


@pytest.mark.parametrize("value", ["nope", "-1", ""])
def test_a_prepare_threshold_that_is_no_count_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValueError, match=r"SAGA_DATABASE_URL=.*use none"):
        Settings(database_url=f"postgresql://saga:secret@pgbouncer:6432/saga?"
                              f"prepare_threshold={value}")


def _statuses(stack: Stack, run_ids: list[str]) -> Counter[str]:
    return Counter(row.status for row in stack.query(
        "SELECT status FROM runs WHERE id = ANY(:ids)", ids=run_ids))


def _waiting(stack: Stack, run_ids: list[str], step: str) -> int:
    return stack.query("SELECT count(*) FROM steps WHERE run_id = ANY(:ids) AND name = :step "
                       "AND status = 'waiting'", ids=run_ids, step=step)[0][0]


def _signal(stack: Stack, run_id: str) -> None:
    response = stack.http.post(f"{stack.base}/v1/runs/{run_id}/signals/label",
                               json={"payload": {"tracking": run_id}},
                               headers={"Idempotency-Key": f"label-{run_id}"}, timeout=10)
    assert response.status_code == 202, response.text


def test_sagas_run_behind_pgbouncer_in_transaction_mode(bouncer: PgBouncer, empty_database: str,
                                                        tmp_path) -> None:
    """Given every process behind a transaction pooler of two server connections, when 30
    runs go at once (a parallel group with retries, timers the sweeper wakes, signals sent
    before and while they are awaited), then all succeed and the saga log is consistent."""
    need("rabbitmq", BROKERS["rabbitmq"])  # one broker: the database is what is tested
    pooled = bouncer.url(empty_database, prepare_threshold="none")
    migrations.upgrade(pooled)  # as `saga migrate` does
    with Stack(empty_database, BROKERS["rabbitmq"], tmp_path) as stack, \
            ThreadPoolExecutor(10) as pool:
        stack.env["SAGA_DATABASE_URL"] = pooled  # the processes; the test reads directly
        starting = [pool.submit(stack.api), pool.submit(stack.worker, 4)]  # side by side
        stack.sweeper()
        for started in starting:
            started.result()
        # A flaky card fails twice (retried when the sweeper says), then the order ships in
        # a parallel group; `labelled` waits 20 minutes then for a signal; `napping` an hour.
        starts = ([lambda: stack.post_order(card="flaky")] * ORDERS
                  + [lambda: stack.post_run("labelled", {})] * LABELLED
                  + [lambda: stack.post_run("napping", {})] * NAPPING)
        everything = list(pool.map(lambda start: start(), starts))
        orders, labelled = everything[:ORDERS], everything[ORDERS:ORDERS + LABELLED]
        napping = everything[ORDERS + LABELLED:]
        database = sa.make_url(empty_database).database
        clients = {(c["addr"], c["port"]) for c in bouncer.show("CLIENTS")
                   if c["database"] == database}

        wait_for(lambda: _waiting(stack, labelled, "cool_off") == LABELLED, 30,
                 "every labelled run to wait out its cool-off")
        early, late = labelled[:LABELLED // 2], labelled[LABELLED // 2:]
        list(pool.map(lambda run_id: _signal(stack, run_id), early))  # kept until awaited
        stack.advance_clock(20 * 60 + 1)  # the sweeper wakes the cool-offs
        wait_for(lambda: _waiting(stack, late, "label") == len(late), 30,
                 "the runs without a signal yet to await theirs")
        list(pool.map(lambda run_id: _signal(stack, run_id), late))
        wait_for(lambda: _waiting(stack, napping, "nap") == NAPPING, 30,
                 "every napping run to sleep")
        stack.advance_clock(HOUR)  # and now the naps

        wait_for(lambda: _statuses(stack, everything)["succeeded"] == len(everything), 60,
                 "every run to succeed")
        invariants.check(stack, everything,
                         Registry.from_modules(["examples.fulfillment", "tests.sagas"]))
        attempts = stack.query("SELECT attempt FROM steps WHERE run_id = ANY(:ids) "
                               "AND name = 'charge_card' AND role = 'forward'", ids=orders)
        assert sorted(a for (a,) in attempts) == [3] * ORDERS  # two 503s, then charged
        labels = stack.query("SELECT run_id, output FROM steps WHERE run_id = ANY(:ids) "
                             "AND name = 'label'", ids=labelled)
        assert {run_id: output for run_id, output in labels} == {
            run_id: {"tracking": run_id} for run_id in labelled}

        # The pooler really was shared: some 20 clients, two server connections, thousands
        # of statements (the same few far more than 5 times on each connection).
        servers = [s for s in bouncer.show("SERVERS") if s["database"] == database]
        stats = next(s for s in bouncer.show("STATS") if s["database"] == database)
        assert len(clients) > bouncer.pool_size and len(servers) <= bouncer.pool_size, \
            (clients, servers)
        assert stats["total_query_count"] > 1000, stats
        for process in stack.processes:
            assert "prepared statement" not in process.output(), process.output()
